{{/*
The chart name, as helm create writes it.
*/}}
{{- define "sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources.
*/}}
{{- define "sidecar.fullname" -}}
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

{{- define "sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The standard labels.
*/}}
{{- define "sidecar.labels" -}}
helm.sh/chart: {{ include "sidecar.chart" . }}
{{ include "sidecar.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "sidecar.name" . }}
{{- end }}

{{/*
The labels pods are selected by.
*/}}
{{- define "sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The seconds the pod needs to drain: --shutdown-delay, --drain-timeout and
the kill timeout for what the workers leave behind.
*/}}
{{- define "sidecar.drainSeconds" -}}
{{- add .Values.sidecar.shutdownDelaySeconds .Values.sidecar.drainTimeoutSeconds .Values.sidecar.killTimeoutSeconds }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the drain plus a margin, or the value given,
which must not be shorter than the drain (the kubelet would SIGKILL a pod
still draining).
*/}}
{{- define "sidecar.gracePeriod" -}}
{{- $need := int (include "sidecar.drainSeconds" .) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $need 10 }}
{{- else }}
{{- $given := int .Values.terminationGracePeriodSeconds }}
{{- if lt $given $need }}
{{- fail (printf "terminationGracePeriodSeconds %d is shorter than the drain it must cover: sidecar.shutdownDelaySeconds + drainTimeoutSeconds + killTimeoutSeconds = %d; the kubelet would SIGKILL a draining pod (raise it, or lower those)" $given $need) }}
{{- end }}
{{- $given }}
{{- end }}
{{- end }}

{{/*
The number of workers: sidecar.workers, else the CPU limit rounded up
("500m" -> 1, "2" -> 2, "1.5" -> 2), else nothing (GOMAXPROCS: the node's
CPUs).
*/}}
{{- define "sidecar.workers" -}}
{{- if not (kindIs "invalid" .Values.sidecar.workers) }}
{{- .Values.sidecar.workers }}
{{- else if and .Values.resources .Values.resources.limits .Values.resources.limits.cpu }}
{{- $cpu := toString .Values.resources.limits.cpu }}
{{- if hasSuffix "m" $cpu }}
{{- max 1 (ceil (divf (trimSuffix "m" $cpu | float64) 1000)) }}
{{- else }}
{{- max 1 (ceil ($cpu | float64)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The sidecar's arguments: the config file, and what only a new master (a
new pod) can change. Everything else is in the config file.
*/}}
{{- define "sidecar.args" -}}
{{- $s := .Values.sidecar -}}
- --config=/etc/sidecar/config.yaml
- --listen=:{{ $s.listenPort }}
- --admin-addr=:{{ $s.adminPort }}
- --schedule={{ $s.schedule }}
{{- range $s.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The config file (the ConfigMap's config.yaml): what a reload applies to
running pods.
*/}}
{{- define "sidecar.configFile" -}}
{{- $s := .Values.sidecar -}}
{{- with (include "sidecar.workers" .) }}
workers: {{ . }}
{{- end }}
{{- if not (kindIs "invalid" $s.minReady) }}
minReady: {{ $s.minReady }}
{{- end }}
shutdownDelay: {{ $s.shutdownDelaySeconds }}s
drainTimeout: {{ $s.drainTimeoutSeconds }}s
killTimeout: {{ $s.killTimeoutSeconds }}s
handoffTimeout: {{ $s.handoffTimeoutSeconds }}s
logVerbosity: {{ $s.logVerbosity }}
{{- if eq $s.mode "sidecar" }}
upstream: {{ default (printf "http://127.0.0.1:%d" (int .Values.app.port)) $s.upstream | quote }}
{{- end }}
{{- if and (eq $s.mode "entrypoint") $s.command }}
command:
{{- range $s.command }}
  - {{ . | quote }}
{{- end }}
{{- end }}
{{- with $s.workerEnv }}
env:
{{- range $k, $v := . }}
  {{ $k | quote }}: {{ $v | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The sidecar container. Its ports are named http and metrics; its probes are
on the admin port.
*/}}
{{- define "sidecar.container" -}}
- name: sidecar
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/sidecar"]
  args:
    {{- include "sidecar.args" . | nindent 4 }}
  {{- if and .Values.sidecar.native (eq .Values.sidecar.mode "sidecar") }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.sidecar.listenPort }}
      protocol: TCP
    - name: metrics
      containerPort: {{ .Values.sidecar.adminPort }}
      protocol: TCP
  {{- with .Values.sidecar.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  startupProbe:
    httpGet:
      path: /livez
      port: metrics
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: metrics
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  livenessProbe:
    httpGet:
      path: /livez
      port: metrics
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: config
      mountPath: /etc/sidecar
      readOnly: true
    {{- if and .Values.tmpDir (eq .Values.sidecar.mode "entrypoint") .Values.sidecar.command }}
    - name: tmp
      mountPath: /tmp
    {{- end }}
{{- end }}

{{/*
The app's preStop sleep in sidecar mode: app.preStopSleepSeconds, else the
shutdown delay plus 5 seconds for the requests in flight.
*/}}
{{- define "sidecar.appPreStopSleep" -}}
{{- if kindIs "invalid" .Values.app.preStopSleepSeconds }}
{{- add .Values.sidecar.shutdownDelaySeconds 5 }}
{{- else }}
{{- .Values.app.preStopSleepSeconds }}
{{- end }}
{{- end }}
