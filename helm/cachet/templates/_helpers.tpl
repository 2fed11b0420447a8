{{- define "cachet.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cachet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cachet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "cachet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "cachet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cachet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cachet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cachet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Values the schema cannot relate to each other: each inconsistency fails the render with a
message naming the values to change.
*/}}
{{- define "cachet.validate" -}}
{{- $v := .Values -}}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)" (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if and $v.pdb.create (not (kindIs "string" $v.pdb.minAvailable)) -}}
{{- $replicas := ternary $v.autoscaling.minReplicas $v.replicaCount $v.autoscaling.enabled | int -}}
{{- if ge (int $v.pdb.minAvailable) $replicas -}}
{{- fail (printf "pdb.minAvailable (%d) must be below the replica count (%d, %s): a budget that needs every pod blocks every node drain" (int $v.pdb.minAvailable) $replicas (ternary "autoscaling.minReplicas" "replicaCount" $v.autoscaling.enabled)) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $v.auth.mode "required") (not $v.auth.existingSecret) (not (include "cachet.configCredentials" .)) -}}
{{- fail "auth.mode is required but no credential is configured: set auth.existingSecret (a Secret with api-keys.yaml and/or JWT keys), or config.auth.api_keys / config.auth.jwt / config.auth.mtls_identities; auth.mode=off is for development only" -}}
{{- end -}}
{{- if and $v.tls.clientAuth (not $v.tls.existingSecret) -}}
{{- fail "tls.clientAuth needs tls.existingSecret (its ca.crt verifies client certificates)" -}}
{{- end -}}
{{- if and $v.auth.existingSecret (eq $v.auth.mode "off") -}}
{{- fail "auth.existingSecret is set but auth.mode is off: its credentials would be ignored" -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" -}}
{{- end -}}
{{- end -}}

{{- define "cachet.configCredentials" -}}
{{- $auth := default dict (get .Values.config "auth") -}}
{{- if or (get $auth "api_keys") (get $auth "jwt") (get $auth "mtls_identities") -}}yes{{- end -}}
{{- end -}}

{{/* The port the kubelet probes: the plaintext health-only port when TLS is on. */}}
{{- define "cachet.probePort" -}}
{{- if .Values.tls.existingSecret -}}{{ .Values.healthPort }}{{- else -}}{{ .Values.port }}{{- end -}}
{{- end -}}
