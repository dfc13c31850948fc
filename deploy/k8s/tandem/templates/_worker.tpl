{{/*
One worker pool's Deployment: call with (dict "root" $ "role" "prefill"|"decode").
Each worker listens on, and advertises, its pod IP (downward API), so peers and the gateway
dial it directly; the registry in Redis is how they find it. Probes use the standard gRPC
health service, which follows the engine loop (services/health.py), not just the server.
*/}}
{{- define "tandem.worker" -}}
{{- $root := .root -}}
{{- $pool := index $root.Values .role -}}
{{- $ports := $root.Values.workerPorts -}}
{{- $service := ternary "tandem.v1.PrefillService" "tandem.v1.DecodeService" (eq .role "prefill") -}}
{{- $ctx := dict "root" $root "component" .role -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "tandem.fullname" $root }}-{{ .role }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tandem.labels" $ctx | nindent 4 }}
spec:
  replicas: {{ $pool.replicas }}
  selector:
    matchLabels:
      {{- include "tandem.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "tandem.labels" $ctx | nindent 8 }}
        tandem.io/worker: "true"
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 30
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if and (gt (int $pool.gpu) 0) $pool.runtimeClassName }}
      runtimeClassName: {{ $pool.runtimeClassName }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .role }}
          image: {{ include "tandem.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            - {{ .role }}
            - --host=$(POD_IP)
            - --advertise-host=$(POD_IP)
            - --worker-id=$(POD_NAME)
            - --port={{ $ports.grpc }}
            - --metrics-port={{ $ports.metrics }}
            - --max-num-seqs={{ $pool.maxNumSeqs }}
            {{- if eq .role "decode" }}
            - --kv-port={{ $ports.kv }}
            {{- end }}
          env:
            - name: POD_IP
              valueFrom:
                fieldRef:
                  fieldPath: status.podIP
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: TANDEM_KV_CACHE_GB
              value: {{ $pool.kvCacheGB | quote }}
            - name: TANDEM_ENGINE_STALL_S
              value: {{ $root.Values.engineStallSeconds | quote }}
            - name: TANDEM_DEVICE
              value: {{ ternary "cuda" "cpu" (gt (int $pool.gpu) 0) | quote }}
            {{- if eq .role "prefill" }}
            - name: TANDEM_HELD_KV_GB
              value: {{ $pool.heldKvGB | quote }}
            {{- end }}
            {{- include "tandem.env" $root | nindent 12 }}
          ports:
            - name: grpc
              containerPort: {{ $ports.grpc }}
            {{- if eq .role "decode" }}
            - name: kv
              containerPort: {{ $ports.kv }}
            {{- end }}
            - name: metrics
              containerPort: {{ $ports.metrics }}
          startupProbe:
            grpc:
              port: {{ $ports.grpc }}
              service: {{ $service }}
            periodSeconds: 10
            failureThreshold: {{ div $root.Values.startupTimeoutSeconds 10 }}
          livenessProbe:
            grpc:
              port: {{ $ports.grpc }}
              service: {{ $service }}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 3
          readinessProbe:
            grpc:
              port: {{ $ports.grpc }}
              service: {{ $service }}
            periodSeconds: 5
            timeoutSeconds: 5
            failureThreshold: 2
          resources:
            {{- $resources := deepCopy $pool.resources }}
            {{- if gt (int $pool.gpu) 0 }}
            {{- $requests := default (dict) $resources.requests }}
            {{- $_ := set $requests $pool.gpuResource (int $pool.gpu) }}
            {{- $_ := set $resources "requests" $requests }}
            {{- $limits := default (dict) $resources.limits }}
            {{- $_ := set $limits $pool.gpuResource (int $pool.gpu) }}
            {{- $_ := set $resources "limits" $limits }}
            {{- end }}
            {{- toYaml $resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "tandem.volumeMounts" $root | nindent 12 }}
            {{- if gt (int $pool.gpu) 0 }}
            - name: shm
              mountPath: /dev/shm
            {{- end }}
      volumes:
        {{- include "tandem.volumes" $root | nindent 8 }}
        {{- if gt (int $pool.gpu) 0 }}
        - name: shm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $pool.shmSize }}
        {{- end }}
      {{- with $pool.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pool.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pool.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
