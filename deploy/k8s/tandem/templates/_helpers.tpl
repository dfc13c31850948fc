{{/* Names, labels and the pieces every pod shares. */}}

{{- define "tandem.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "gateway"). */}}
{{- define "tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tandem.labels" -}}
{{ include "tandem.selectorLabels" . }}
app.kubernetes.io/part-of: tandem
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "tandem.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{/* TANDEM_REDIS_URL: the chart's Redis, an external URL, or a Secret holding one. */}}
{{- define "tandem.redisEnv" -}}
- name: TANDEM_REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s-redis:6379/0" (include "tandem.fullname" .) | quote }}
{{- else if .Values.redis.external.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else }}
  value: {{ required "redis.enabled is false: set redis.external.url or redis.external.existingSecret" .Values.redis.external.url | quote }}
{{- end }}
{{- end -}}

{{/* The environment every Tandem process gets. */}}
{{- define "tandem.env" -}}
{{ include "tandem.redisEnv" . }}
- name: TANDEM_WORKER_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.workerSecret.existingSecret | default (printf "%s-worker-secret" (include "tandem.fullname" .)) }}
      key: {{ .Values.workerSecret.key }}
- name: TANDEM_CACHE_DIR
  value: /cache
- name: TANDEM_DTYPE
  value: {{ .Values.model.dtype | quote }}
- name: HOME
  value: /tmp
{{- with .Values.model.path }}
- name: TANDEM_MODEL
  value: {{ . | quote }}
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Volumes every Tandem pod mounts: the converted-model cache and a writable /tmp. */}}
{{- define "tandem.volumes" -}}
- name: cache
{{- if .Values.model.cache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.model.cache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.model.cache.sizeLimit }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- with .Values.model.volume }}
- name: model
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "tandem.volumeMounts" -}}
- name: cache
  mountPath: /cache
- name: tmp
  mountPath: /tmp
{{- if .Values.model.volume }}
- name: model
  mountPath: /models
  readOnly: true
{{- end }}
{{- end -}}
