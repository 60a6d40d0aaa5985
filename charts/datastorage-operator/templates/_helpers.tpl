{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "datastorage.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "datastorage.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "datastorage.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "datastorage.selectorLabels" -}}
app.kubernetes.io/name: {{ include "datastorage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "datastorage.labels" -}}
helm.sh/chart: {{ include "datastorage.chart" . }}
{{ include "datastorage.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "datastorage.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "datastorage.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the database URL. */}}
{{- define "datastorage.dbSecretName" -}}
{{- default (printf "%s-db" (include "datastorage.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{- define "datastorage.checkpointSecretName" -}}
{{- default (printf "%s-checkpoint" (include "datastorage.fullname" .)) .Values.checkpoint.existingSecret }}
{{- end }}

{{/* The monitoring API (Prometheus Operator) is installed. */}}
{{- define "datastorage.monitoringApi" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/* The operator image: by digest when image.digest is set (immutable; the tag, if any, is then informational). */}}
{{- define "datastorage.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest | quote }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) | quote }}
{{- end }}
{{- end }}
