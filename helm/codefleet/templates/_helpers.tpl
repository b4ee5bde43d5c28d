{{/*
Names. Dots become dashes: a worker's id is its pod name, and a worker id is [A-Za-z0-9_-].
The full name is cut at 40 characters, so that the names made from it (-dispatcher, -worker
and a worker's -N) fit where Kubernetes limits them and stay distinct.
*/}}
{{- define "codefleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | replace "." "-" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "codefleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | replace "." "-" | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | replace "." "-" | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | replace "." "-" | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The dispatchers' objects. */}}
{{- define "codefleet.dispatcher.fullname" -}}
{{- printf "%s-dispatcher" (include "codefleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The workers' objects. A StatefulSet's name stays within 52 characters: its pods carry a
controller-revision-hash label of the name and 11 more. */}}
{{- define "codefleet.worker.fullname" -}}
{{- printf "%s-worker" (include "codefleet.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "codefleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; include with (dict "ctx" $ "component" "worker"). */}}
{{- define "codefleet.labels" -}}
helm.sh/chart: {{ include "codefleet.chart" .ctx }}
{{ include "codefleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: codefleet
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "codefleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "codefleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with get . "component" }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "codefleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "codefleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference; include with (dict "ctx" $ "image" .Values.worker.image). */}}
{{- define "codefleet.image" -}}
{{- $tag := .image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion }}
{{- printf "%s:%s" .image.repository (toString $tag) }}
{{- end }}

{{- define "codefleet.pullPolicy" -}}
{{- .image.pullPolicy | default .ctx.Values.image.pullPolicy }}
{{- end }}

{{/*
codefleet.flag renders one argument, --name=value, from (list "name" value); nothing when the
value is null, "", false or an empty list, so that the binary's default holds. Whole numbers
print without an exponent (YAML numbers reach templates as float64), lists comma-separated.
*/}}
{{- define "codefleet.flag" -}}
{{- $name := index . 0 }}
{{- $v := index . 1 }}
{{- if kindIs "invalid" $v }}
{{- else if kindIs "bool" $v }}
{{- if $v }}
- {{ printf "--%s=true" $name | quote }}
{{- end }}
{{- else if kindIs "slice" $v }}
{{- if $v }}
- {{ printf "--%s=%s" $name (join "," $v) | quote }}
{{- end }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) }}
{{- if eq (float64 $v) (float64 (int64 $v)) }}
- {{ printf "--%s=%d" $name (int64 $v) | quote }}
{{- else }}
- {{ printf "--%s=%v" $name $v | quote }}
{{- end }}
{{- else if ne (toString $v) "" }}
- {{ printf "--%s=%s" $name (toString $v) | quote }}
{{- end }}
{{- end }}

{{/*
NATS. The files (creds, nkey seed, TLS) come from Secrets projected into one volume mounted at
/etc/codefleet/nats; the password and the token are variables from Secrets.
*/}}
{{- define "codefleet.nats.dir" -}}/etc/codefleet/nats{{- end }}
{{- define "codefleet.nats.secretName" -}}{{ include "codefleet.fullname" . }}-nats{{- end }}

{{/* codefleet.nats.check fails on values that cannot work together. */}}
{{- define "codefleet.nats.check" -}}
{{- $n := .Values.nats }}
{{- range $item := list (list "nats.creds" $n.creds) (list "nats.nkey" $n.nkey) (list "nats.password" $n.password) (list "nats.token" $n.token) (list "nats.tls.ca" $n.tls.ca) }}
{{- if and (index $item 1).existingSecret (index $item 1).value }}
{{- fail (printf "%s: set existingSecret or value, not both" (index $item 0)) }}
{{- end }}
{{- end }}
{{- if and $n.tls.client.existingSecret (or $n.tls.client.cert $n.tls.client.key) }}
{{- fail "nats.tls.client: set existingSecret or cert and key, not both" }}
{{- end }}
{{- if and (not $n.tls.client.existingSecret) (ne (empty $n.tls.client.cert) (empty $n.tls.client.key)) }}
{{- fail "nats.tls.client: cert and key go together" }}
{{- end }}
{{- $hasPassword := or $n.password.existingSecret $n.password.value }}
{{- if ne (empty $n.user) (not $hasPassword) }}
{{- fail "nats.user and nats.password go together" }}
{{- end }}
{{- $ways := 0 }}
{{- if or $n.creds.existingSecret $n.creds.value }}{{ $ways = add1 $ways }}{{ end }}
{{- if or $n.nkey.existingSecret $n.nkey.value }}{{ $ways = add1 $ways }}{{ end }}
{{- if $n.user }}{{ $ways = add1 $ways }}{{ end }}
{{- if or $n.token.existingSecret $n.token.value }}{{ $ways = add1 $ways }}{{ end }}
{{- if gt $ways 1 }}
{{- fail "nats: give one way to log in (creds, nkey, user and password, or token), not several" }}
{{- end }}
{{- end }}

{{/* codefleet.nats.files lists the mounted files as (list flag file secret key). */}}
{{- define "codefleet.nats.files" -}}
{{- $n := .Values.nats }}
{{- $own := include "codefleet.nats.secretName" . }}
{{- $files := list }}
{{- if or $n.creds.existingSecret $n.creds.value }}
{{- $files = append $files (list "nats-creds" "nats.creds" ($n.creds.existingSecret | default $own) $n.creds.key) }}
{{- end }}
{{- if or $n.nkey.existingSecret $n.nkey.value }}
{{- $files = append $files (list "nats-nkey" "nkey.seed" ($n.nkey.existingSecret | default $own) $n.nkey.key) }}
{{- end }}
{{- if or $n.tls.ca.existingSecret $n.tls.ca.value }}
{{- $files = append $files (list "nats-tls-ca" "ca.crt" ($n.tls.ca.existingSecret | default $own) $n.tls.ca.key) }}
{{- end }}
{{- if or $n.tls.client.existingSecret $n.tls.client.cert }}
{{- $files = append $files (list "nats-tls-cert" "tls.crt" ($n.tls.client.existingSecret | default $own) $n.tls.client.certKey) }}
{{- $files = append $files (list "nats-tls-key" "tls.key" ($n.tls.client.existingSecret | default $own) $n.tls.client.keyKey) }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{- define "codefleet.nats.args" -}}
{{- include "codefleet.nats.check" . }}
{{- $dir := include "codefleet.nats.dir" . }}
{{- range fromJsonArray (include "codefleet.nats.files" .) }}
- {{ printf "--%s=%s/%s" (index . 0) $dir (index . 1) | quote }}
{{- end }}
{{- with .Values.nats.user }}
- {{ printf "--nats-user=%s" . | quote }}
{{- end }}
{{- end }}

{{- define "codefleet.nats.env" -}}
{{- $n := .Values.nats }}
{{- $own := include "codefleet.nats.secretName" . }}
{{- if or $n.password.existingSecret $n.password.value }}
- name: CODEFLEET_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $n.password.existingSecret | default $own }}
      key: {{ $n.password.key }}
{{- end }}
{{- if or $n.token.existingSecret $n.token.value }}
- name: CODEFLEET_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $n.token.existingSecret | default $own }}
      key: {{ $n.token.key }}
{{- end }}
{{- end }}

{{- define "codefleet.nats.volume" -}}
{{- $files := fromJsonArray (include "codefleet.nats.files" .) }}
{{- if $files }}
- name: nats-auth
  projected:
    # Readable by the daemon whatever its user: the files are root's, and the dispatcher (and a
    # Daytona worker) runs as 65532.
    defaultMode: 0444
    sources:
      {{- range $files }}
      - secret:
          name: {{ index . 2 }}
          items:
            - key: {{ index . 3 }}
              path: {{ index . 1 }}
      {{- end }}
{{- end }}
{{- end }}

{{- define "codefleet.nats.volumeMount" -}}
{{- if fromJsonArray (include "codefleet.nats.files" .) }}
- name: nats-auth
  mountPath: {{ include "codefleet.nats.dir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* An HTTP probe of the daemons; include with (list $ "/healthz" .Values.worker.livenessProbe). */}}
{{- define "codefleet.probe" -}}
httpGet:
  path: {{ index . 1 }}
  port: http
{{- with index . 2 }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pod annotations both daemons get: the fleet config's checksum rolls them when it changes. */}}
{{- define "codefleet.podAnnotations" -}}
checksum/fleet: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- if and .Values.metrics.enabled .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.http.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}
