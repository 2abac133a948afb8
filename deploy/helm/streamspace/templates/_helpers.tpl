{{/* Names */}}
{{- define "streamspace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamspace.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "streamspace.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "streamspace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "streamspace.selector" (list . "gateway") */}}
{{- define "streamspace.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "streamspace.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "streamspace.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "streamspace.sessionNamespace" -}}
{{- default .Release.Namespace .Values.agent.sessionNamespace -}}
{{- end -}}

{{- define "streamspace.gatewaySecretName" -}}
{{- default (printf "%s-gateway" (include "streamspace.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "streamspace.connectionsSecretName" -}}
{{- default (printf "%s-connections" (include "streamspace.fullname" .)) .Values.connections.existingSecret -}}
{{- end -}}

{{- define "streamspace.agentSecretName" -}}
{{- default (printf "%s-agent-token" (include "streamspace.fullname" .)) .Values.agent.existingSecret -}}
{{- end -}}

{{- define "streamspace.temporalTlsSecretName" -}}
{{- default (printf "%s-temporal-tls" (include "streamspace.fullname" .)) .Values.temporal.tls.existingSecret -}}
{{- end -}}

{{- define "streamspace.temporalApiKeySecretName" -}}
{{- default (printf "%s-temporal-api-key" (include "streamspace.fullname" .)) .Values.temporal.apiKey.existingSecret -}}
{{- end -}}

{{/* redis when the gateway runs (or may run) more than one replica */}}
{{- define "streamspace.hubBackend" -}}
{{- if .Values.gateway.hubBackend -}}
{{- .Values.gateway.hubBackend -}}
{{- else if or (gt (int .Values.gateway.replicaCount) 1) .Values.gateway.autoscaling.enabled -}}
redis
{{- else -}}
memory
{{- end -}}
{{- end -}}

{{- define "streamspace.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.host -}}
{{- printf "redis://:%s@%s:%d/%d" (urlquery .Values.redis.password) .Values.redis.host (int .Values.redis.port) (int .Values.redis.db) -}}
{{- end -}}
{{- end -}}

{{/* Address of Temporal's frontend: the subchart's Service when temporal.enabled, else temporal.address. */}}
{{- define "streamspace.temporalAddress" -}}
{{- if .Values.temporal.enabled -}}
{{- $name := default "temporal" .Values.temporal.nameOverride -}}
{{- $full := ternary .Release.Name (printf "%s-%s" .Release.Name $name) (contains $name .Release.Name) -}}
{{- printf "%s-frontend:7233" (default $full .Values.temporal.fullnameOverride | trunc 63 | trimSuffix "-") -}}
{{- else -}}
{{- required "temporal.address is required (host:port of Temporal's frontend) unless temporal.enabled=true" .Values.temporal.address -}}
{{- end -}}
{{- end -}}

{{/* Checks every install makes before rendering anything: fail with the value to set. */}}
{{- define "streamspace.validate" -}}
{{- if not (or .Values.connections.existingSecret .Values.database.url .Values.database.password) -}}
{{- fail "\n\nstreamspace: no database credentials. Set database.password (with database.host/name/user), database.url (postgres://...), or connections.existingSecret (a Secret with DATABASE_URL or DB_USER/DB_PASSWORD)." -}}
{{- end -}}
{{- $hub := include "streamspace.hubBackend" . -}}
{{- if not (has $hub (list "memory" "redis")) -}}
{{- fail (printf "\n\nstreamspace: gateway.hubBackend must be memory or redis, not %q" $hub) -}}
{{- end -}}
{{- if and (eq $hub "memory") (or (gt (int .Values.gateway.replicaCount) 1) .Values.gateway.autoscaling.enabled) -}}
{{- fail "\n\nstreamspace: gateway.hubBackend=memory works with one gateway replica only; use redis (set redis.*) for gateway.replicaCount > 1 or gateway.autoscaling." -}}
{{- end -}}
{{- if and (eq $hub "redis") (not .Values.connections.existingSecret) (not (include "streamspace.redisUrl" .)) -}}
{{- fail "\n\nstreamspace: the gateway runs more than one replica (or autoscales), so agents are shared through Redis: set redis.url (redis://:<password>@host:6379) or redis.host + redis.password, or provide REDIS_URL in connections.existingSecret." -}}
{{- end -}}
{{- if and (include "streamspace.redisUrl" .) (not .Values.redis.url) (not .Values.redis.password) -}}
{{- fail "\n\nstreamspace: redis.password is required with redis.host (the control plane only talks to a Redis that requires a password)." -}}
{{- end -}}
{{- if and .Values.agent.enabled (not (or .Values.agent.token .Values.agent.existingSecret)) -}}
{{- fail "\n\nstreamspace: the Kubernetes agent needs its AGENT_TOKEN, minted by the control plane. Either install with agent.enabled=false first, mint a token (kubectl exec deploy/<release>-gateway -- node dist/api/auth/agent-token-cli.js <agent.agentId>, or POST /api/v1/agents/tokens) and upgrade with agent.token=<token> (or agent.existingSecret=<Secret with key token>); or set agent.enabled=false to run agents elsewhere." -}}
{{- end -}}
{{- if and .Values.secrets.jwtSecret (lt (len .Values.secrets.jwtSecret) 32) -}}
{{- fail "\n\nstreamspace: secrets.jwtSecret must be at least 32 bytes (leave it empty to generate one)." -}}
{{- end -}}
{{- if and .Values.secrets.agentTokenSecret (lt (len .Values.secrets.agentTokenSecret) 32) -}}
{{- fail "\n\nstreamspace: secrets.agentTokenSecret must be at least 32 bytes (leave it empty to generate one)." -}}
{{- end -}}
{{- if and .Values.secrets.jwtSecret (eq .Values.secrets.jwtSecret .Values.secrets.agentTokenSecret) -}}
{{- fail "\n\nstreamspace: secrets.agentTokenSecret must differ from secrets.jwtSecret." -}}
{{- end -}}
{{- if and .Values.temporal.tls.enabled (not .Values.temporal.tls.existingSecret) (not (and .Values.temporal.tls.cert .Values.temporal.tls.key)) (not .Values.temporal.tls.ca) -}}
{{- fail "\n\nstreamspace: temporal.tls.enabled needs temporal.tls.existingSecret (keys ca.crt, tls.crt, tls.key) or inline temporal.tls.ca and/or temporal.tls.cert + temporal.tls.key." -}}
{{- end -}}
{{- if and .Values.agent.enabled .Values.agent.ha.enabled (lt (int .Values.agent.ha.replicaCount) 2) -}}
{{- fail "\n\nstreamspace: agent.ha.enabled needs agent.ha.replicaCount >= 2 (set agent.ha.enabled=false for a single agent)." -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the gateway and the worker (Temporal connection included). */}}
{{- define "streamspace.commonEnv" -}}
- name: LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- if not .Values.database.url }}
- name: DB_HOST
  value: {{ .Values.database.host | quote }}
- name: DB_PORT
  value: {{ .Values.database.port | quote }}
- name: DB_NAME
  value: {{ .Values.database.name | quote }}
{{- end }}
- name: TEMPORAL_ADDRESS
  value: {{ include "streamspace.temporalAddress" . | quote }}
- name: TEMPORAL_NAMESPACE
  value: {{ .Values.temporal.namespace | quote }}
- name: TEMPORAL_TASK_QUEUE
  value: {{ .Values.temporal.taskQueue | quote }}
{{- if .Values.temporal.tls.enabled }}
{{- $tls := .Values.temporal.tls }}
{{- $keys := $tls.existingSecretKeys }}
{{- if ternary $keys.ca $tls.ca (not (empty $tls.existingSecret)) }}
- name: TEMPORAL_TLS_CA_FILE
  value: /etc/streamspace/temporal-tls/ca.crt
{{- end }}
{{- if ternary (and $keys.cert $keys.key) (and $tls.cert $tls.key) (not (empty $tls.existingSecret)) }}
- name: TEMPORAL_TLS_CERT_FILE
  value: /etc/streamspace/temporal-tls/tls.crt
- name: TEMPORAL_TLS_KEY_FILE
  value: /etc/streamspace/temporal-tls/tls.key
{{- end }}
{{- if $tls.serverName }}
- name: TEMPORAL_TLS_SERVER_NAME
  value: {{ $tls.serverName | quote }}
{{- end }}
{{- end }}
{{- if or .Values.temporal.apiKey.value .Values.temporal.apiKey.existingSecret }}
- name: TEMPORAL_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace.temporalApiKeySecretName" . }}
      key: {{ ternary .Values.temporal.apiKey.existingSecretKey "TEMPORAL_API_KEY" (not (empty .Values.temporal.apiKey.existingSecret)) }}
{{- end }}
{{- end -}}

{{- define "streamspace.temporalTlsVolumeMount" -}}
{{- if .Values.temporal.tls.enabled }}
- name: temporal-tls
  mountPath: /etc/streamspace/temporal-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "streamspace.temporalTlsVolume" -}}
{{- if .Values.temporal.tls.enabled }}
- name: temporal-tls
  secret:
    secretName: {{ include "streamspace.temporalTlsSecretName" . }}
    defaultMode: 288 # 0440
    {{- if .Values.temporal.tls.existingSecret }}
    {{- $keys := .Values.temporal.tls.existingSecretKeys }}
    items:
      {{- if $keys.ca }}
      - { key: {{ $keys.ca | quote }}, path: ca.crt }
      {{- end }}
      {{- if and $keys.cert $keys.key }}
      - { key: {{ $keys.cert | quote }}, path: tls.crt }
      - { key: {{ $keys.key | quote }}, path: tls.key }
      {{- end }}
    {{- end }}
{{- end }}
{{- end -}}

{{/* name: value pairs from a map, sorted */}}
{{- define "streamspace.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{- define "streamspace.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "streamspace.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
