{{/* The prefix of every object's name: the release's name when it says fnsession, else <release>-fnsession. */}}
{{- define "fnsession.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "fnsession" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-fnsession" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object: manifests/' own, then Helm's. Call with (list $ "component"). */}}
{{- define "fnsession.labels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/part-of: fnsession
{{- with index . 1 }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "fnsession.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The pod template's annotations: Prometheus's, then the user's. Call with (list $ port). */}}
{{- define "fnsession.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $port := index . 1 -}}
{{- $a := dict -}}
{{- if and $root.Values.metrics.podAnnotations $port -}}
{{- $_ := set $a "prometheus.io/scrape" "true" -}}
{{- $_ := set $a "prometheus.io/port" (toString $port) -}}
{{- $_ := set $a "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- $a = merge (deepCopy $root.Values.podAnnotations) $a -}}
{{- if $a }}
annotations:
  {{- toYaml $a | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget. Call with (list $ "component" .Values.x.pdb). */}}
{{- define "fnsession.pdb" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $pdb := index . 2 -}}
{{- if $pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "fnsession.fullname" $root }}-{{ $component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "fnsession.labels" (list $root $component) | nindent 4 }}
spec:
  {{- if hasKey $pdb "minAvailable" }}
  minAvailable: {{ $pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels: {app.kubernetes.io/name: {{ include "fnsession.fullname" $root }}-{{ $component }}}
{{- end }}
{{- end -}}
