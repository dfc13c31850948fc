// helmrender renders a Helm chart the way `helm template` does, for tests on machines without helm:
// Go's text/template with the sprig function library (Helm's template engine) plus Helm's own
// functions: include, tpl, toYaml, fromYaml, toJson (sprig), required, lookup (always empty).
//
// Usage: helmrender CHART_DIR RELEASE NAMESPACE < values.json
//
// The values arrive as JSON, already coalesced by the caller (chart values.yaml, then each -f file:
// maps merge deeply, later files win, lists are replaced, null deletes a key; that is Helm's rule).
// Output: every rendered non-partial template that is not blank, each after
// "---\n# Source: <chart>/templates/<file>\n", in file-name order, as Helm prints them.
// Built in GOPATH mode: GO111MODULE=off GOPATH=/usr/share/gocode (Debian's golang-* packages).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

type chartMeta struct {
	Name       string `yaml:"name"`
	Version    string `yaml:"version"`
	AppVersion string `yaml:"appVersion"`
}

func main() {
	if len(os.Args) != 4 {
		fail(errors.New("usage: helmrender CHART_DIR RELEASE NAMESPACE < values.json"))
	}
	chartDir, release, namespace := os.Args[1], os.Args[2], os.Args[3]
	var values map[string]interface{}
	if err := json.NewDecoder(os.Stdin).Decode(&values); err != nil {
		fail(fmt.Errorf("values: %w", err))
	}
	meta := chartMeta{}
	raw, err := ioutil.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err == nil {
		err = yaml.Unmarshal(raw, &meta)
	}
	if err != nil {
		fail(fmt.Errorf("Chart.yaml: %w", err))
	}
	out, err := render(chartDir, meta, values, release, namespace)
	if err != nil {
		fail(err)
	}
	fmt.Print(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "helmrender:", err)
	os.Exit(1)
}

func render(chartDir string, meta chartMeta, values map[string]interface{}, release, namespace string) (string, error) {
	files, err := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	root := template.New("chart").Option("missingkey=zero")
	root.Funcs(funcs(root))
	var names []string
	for _, f := range files {
		base := filepath.Base(f)
		if base == "NOTES.txt" || !(strings.HasSuffix(base, ".yaml") || strings.HasSuffix(base, ".tpl")) {
			continue
		}
		text, err := ioutil.ReadFile(f)
		if err != nil {
			return "", err
		}
		name := meta.Name + "/templates/" + base
		if _, err := root.New(name).Parse(string(text)); err != nil {
			return "", err
		}
		if !strings.HasPrefix(base, "_") {
			names = append(names, name)
		}
	}
	data := map[string]interface{}{
		"Values":  values,
		"Release": map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
		"Chart":   map[string]interface{}{"Name": meta.Name, "Version": meta.Version, "AppVersion": meta.AppVersion},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.33.0", "Major": "1", "Minor": "33", "GitVersion": "v1.33.0"},
		},
	}
	var out strings.Builder
	for _, name := range names {
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		out.WriteString("---\n# Source: " + name + "\n" + strings.TrimLeft(text, "\n"))
		if !strings.HasSuffix(text, "\n") {
			out.WriteString("\n")
		}
	}
	return out.String(), nil
}

// funcs is sprig's text function map without env/expandenv (Helm drops them) plus Helm's own.
func funcs(root *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = func(v interface{}) string {
		b, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(b), "\n")
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		_ = yaml.Unmarshal([]byte(s), &m)
		return m
	}
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	f["lookup"] = func(apiVersion, kind, namespace, name string) map[string]interface{} {
		return map[string]interface{}{}
	}
	return f
}
