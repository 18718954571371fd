{{/* The release's full name, cut to a DNS label. */}}
{{- define "hadron.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hadron.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "hadron.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hadron.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hadron.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespace of the worker Jobs. */}}
{{- define "hadron.workerNamespace" -}}
{{- default .Release.Namespace .Values.driver.namespace -}}
{{- end -}}

{{/* Whether the store is PostgreSQL. */}}
{{- define "hadron.postgres" -}}
{{- if or .Values.database.url .Values.database.existingSecret.name -}}true{{- end -}}
{{- end -}}

{{/* The names agents may use in secretRef.name, comma-separated. */}}
{{- define "hadron.agentSecretNames" -}}
{{- $names := list -}}
{{- range .Values.agentSecrets -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}
