{{/* Name of the chart (or nameOverride), at most 63 characters. */}}
{{- define "modelfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* release-chart, or the release name when it already contains the chart name. */}}
{{- define "modelfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "modelfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "modelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelfleet
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "modelfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects. */}}
{{- define "modelfleet.componentLabels" -}}
{{ include "modelfleet.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* repository@digest, else repository:tag (tag defaults to the appVersion). */}}
{{- define "modelfleet.image" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ .image.tag | default .ctx.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{- define "modelfleet.operator.fullname" -}}
{{ include "modelfleet.fullname" . }}-operator
{{- end }}

{{- define "modelfleet.scheduler.fullname" -}}
{{ include "modelfleet.fullname" . }}-scheduler
{{- end }}

{{- define "modelfleet.operator.serviceAccountName" -}}
{{ .Values.operator.serviceAccount.name | default (include "modelfleet.operator.fullname" .) }}
{{- end }}

{{- define "modelfleet.scheduler.serviceAccountName" -}}
{{ .Values.scheduler.serviceAccount.name | default (include "modelfleet.scheduler.fullname" .) }}
{{- end }}

{{/* The Secret with the control API's token (chart-made unless existingSecret is set). */}}
{{- define "modelfleet.controlTokenSecret" -}}
{{ .Values.scheduler.controlToken.existingSecret | default (printf "%s-control-token" (include "modelfleet.fullname" .)) }}
{{- end }}

{{/* True when the scheduler runs as a KubeRay RayService (mode and cluster capabilities). */}}
{{- define "modelfleet.scheduler.rayService" -}}
{{- $has := .Capabilities.APIVersions.Has "ray.io/v1/RayService" -}}
{{- if eq .Values.scheduler.mode "rayservice" -}}
{{- if not $has -}}
{{- fail "scheduler.mode=rayservice: this cluster does not serve ray.io/v1 RayService (install KubeRay first, or use mode auto or deployment)" -}}
{{- end -}}
true
{{- else if and (eq .Values.scheduler.mode "auto") $has -}}
true
{{- end -}}
{{- end }}

{{/* True when the Prometheus Operator's CRDs are served and monitoring is on. */}}
{{- define "modelfleet.monitoring" -}}
{{- if and .Values.monitoring.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PodMonitor") -}}
true
{{- end -}}
{{- end }}

{{/* The restricted-profile security context of every container. */}}
{{- define "modelfleet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod security context: the images' non-root user (uid 10001). */}}
{{- define "modelfleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}
