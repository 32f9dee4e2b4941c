{{/* ---- names ------------------------------------------------------------------------------- */}}

{{- define "parley.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "parley.fullname" -}}
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

{{/* The gRPC Service (and default object name) of a component: <fullname>-<component>. */}}
{{- define "parley.componentName" -}}
{{- printf "%s-%s" (include "parley.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "parley.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "parley.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "parley.sharedSecretName" -}}
{{- default (printf "%s-shared" (include "parley.fullname" .)) .Values.sharedSecret.existingSecret -}}
{{- end -}}

{{- define "parley.jwksConfigMapName" -}}
{{- default (printf "%s-jwks" (include "parley.fullname" .)) .Values.auth.existingJwksConfigMap -}}
{{- end -}}

{{/* PARLEY_CONTACTS_ADDR, PARLEY_CHANNEL_GATEWAY_ADDR, ... */}}
{{- define "parley.addrEnv" -}}
{{- printf "PARLEY_%s_ADDR" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/* ---- labels ------------------------------------------------------------------------------ */}}

{{- define "parley.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "parley.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parley
{{- end -}}

{{- define "parley.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parley.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "contacts") */}}
{{- define "parley.componentLabels" -}}
{{ include "parley.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "parley.componentSelectorLabels" -}}
{{ include "parley.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector of one process's pods: (dict "root" $ "p" $process) */}}
{{- define "parley.processSelectorLabels" -}}
{{ include "parley.selectorLabels" .root }}
app.kubernetes.io/component: {{ .p.component }}
parley.io/process: {{ .p.process }}
{{- end -}}

{{/* ---- values ------------------------------------------------------------------------------ */}}

{{/*
Deep merge of two maps where the second wins, key by key, including false, 0, "" and null (sprig's
merge/mergeOverwrite drop those, so `autoscaling: {enabled: false}` would not override a default).
Takes (list $base $override); returns YAML.
*/}}
{{- define "parley.deepMerge" -}}
{{- $base := deepCopy (index . 0) -}}
{{- $over := index . 1 | default dict -}}
{{- range $key, $value := $over -}}
{{- $current := get $base $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $base $key (include "parley.deepMerge" (list $current $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $base $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $base -}}
{{- end -}}

{{/* Keys of a component that are not process settings. */}}
{{- define "parley.componentOnlyKeys" -}}
{{- list "processes" "calls" "database" "existingSecret" "secrets" "secretEnv" "secretFiles" | toJson -}}
{{- end -}}

{{/*
Every enabled process of every enabled component, fully merged (defaults <- component <- process),
as YAML {items: [...]}. Each item also carries: component, process, name (its Deployment),
package, calls, database, secretName, secretEnv, secretFiles, hasDatabase.
*/}}
{{- define "parley.processes" -}}
{{- $root := . -}}
{{- $onlyKeys := include "parley.componentOnlyKeys" . | fromJsonArray -}}
{{- $items := list -}}
{{- range $component, $c := .Values.components -}}
{{- $compSettings := deepCopy $c -}}
{{- range $k := $onlyKeys -}}{{- $_ := unset $compSettings $k -}}{{- end -}}
{{- $compMerged := include "parley.deepMerge" (list $root.Values.defaults $compSettings) | fromYaml -}}
{{- if $compMerged.enabled -}}
{{- range $process, $pover := ($c.processes | default (dict "serve" dict)) -}}
{{- $p := include "parley.deepMerge" (list $compMerged ($pover | default dict)) | fromYaml -}}
{{- if $p.enabled -}}
{{- $base := include "parley.componentName" (dict "root" $root "component" $component) -}}
{{- $name := ternary $base (printf "%s-%s" $base $process | trunc 63 | trimSuffix "-") (eq $process "serve") -}}
{{- $db := $c.database | default dict -}}
{{- $_ := set $p "component" $component -}}
{{- $_ := set $p "process" $process -}}
{{- $_ := set $p "name" $name -}}
{{- $_ := set $p "package" (printf "parley_%s" ($component | replace "-" "_")) -}}
{{- $_ := set $p "calls" ($c.calls | default list) -}}
{{- $_ := set $p "database" $db -}}
{{- $_ := set $p "hasDatabase" (not (empty $db)) -}}
{{- if and $db (not $db.url) (not $db.existingSecret) (not $c.existingSecret) -}}
{{- fail (printf "components.%s.database: set url, or existingSecret (a Secret with the URL), or the component's existingSecret" $component) -}}
{{- end -}}
{{- $_ := set $p "databaseSecretName" (default (default $base $c.existingSecret) $db.existingSecret) -}}
{{- $_ := set $p "databaseSecretKey" (default "database-url" $db.existingSecretKey) -}}
{{- $_ := set $p "secretName" (default $base $c.existingSecret) -}}
{{- $_ := set $p "secretEnv" ($c.secretEnv | default dict) -}}
{{- $_ := set $p "secretFiles" ($c.secretFiles | default dict) -}}
{{- $items = append $items $p -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "items" $items) -}}
{{- end -}}

{{/* Enabled components (names), in order. */}}
{{- define "parley.components" -}}
{{- $names := list -}}
{{- range $component, $c := .Values.components -}}
{{- $enabled := true -}}
{{- if hasKey $c "enabled" -}}{{- $enabled = $c.enabled -}}{{- else if hasKey $.Values.defaults "enabled" -}}{{- $enabled = $.Values.defaults.enabled -}}{{- end -}}
{{- if $enabled -}}{{- $names = append $names $component -}}{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{- define "parley.image" -}}
{{- $root := .root -}}
{{- $digest := get ($root.Values.image.digests | default dict) .component -}}
{{- if $digest -}}
{{- printf "%s/%s@%s" $root.Values.image.registry .component $digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $root.Values.image.registry .component (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "parley.terminationGrace" -}}
{{- if .terminationGracePeriodSeconds -}}
{{- .terminationGracePeriodSeconds -}}
{{- else -}}
{{- add (int .preStopSleepSeconds) (int (ceil .shutdownGraceSeconds)) 10 -}}
{{- end -}}
{{- end -}}

{{/* Plain (non-secret) environment of one process: (dict "root" $ "p" $process) -> YAML map. */}}
{{- define "parley.processEnv" -}}
{{- $root := .root -}}
{{- $p := .p -}}
{{- $env := dict -}}
{{- $_ := set $env "PARLEY_SERVICE_NAME" $p.component -}}
{{- $_ := set $env "PARLEY_LOG_LEVEL" $root.Values.logLevel -}}
{{- $_ := set $env "PARLEY_STREAM_REPLICAS" (toString $root.Values.messaging.streamReplicas) -}}
{{- $_ := set $env "PARLEY_SHUTDOWN_GRACE_SECONDS" (toString $p.shutdownGraceSeconds) -}}
{{- $_ := set $env "PARLEY_AUTH_JWKS_FILE" "/etc/parley/auth/jwks.json" -}}
{{- $_ := set $env "PARLEY_METRICS_PORT" (toString (default 0 $p.ports.metrics)) -}}
{{- if $p.ports.grpc -}}
{{- $_ := set $env "PARLEY_GRPC_PORT" (toString $p.ports.grpc) -}}
{{- end -}}
{{- if $p.ports.http -}}
{{- $_ := set $env "PARLEY_HTTP_PORT" (toString $p.ports.http) -}}
{{- end -}}
{{- range $callee := $p.calls -}}
{{- $_ := set $env (include "parley.addrEnv" $callee) (printf "%s:%v" (include "parley.componentName" (dict "root" $root "component" $callee)) $root.Values.service.grpcPort) -}}
{{- end -}}
{{- if $root.Values.tracing.otlpEndpoint -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $root.Values.tracing.otlpEndpoint -}}
{{- $_ := set $env "OTEL_TRACES_EXPORTER" "otlp" -}}
{{- else -}}
{{- $_ := set $env "OTEL_TRACES_EXPORTER" "none" -}}
{{- end -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER" $root.Values.tracing.sampler -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER_ARG" (toString $root.Values.tracing.samplerArg) -}}
{{- $_ := set $env "OTEL_PROPAGATORS" "tracecontext,baggage" -}}
{{- range $k, $v := $p.env -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $_ := set $env $k (toString $v) -}}
{{- end -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Whether the Prometheus Operator's PodMonitor is available and wanted. */}}
{{- define "parley.podMonitorEnabled" -}}
{{- if and .Values.metrics.podMonitor.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PodMonitor") -}}true{{- end -}}
{{- end -}}

{{- define "parley.prometheusRuleEnabled" -}}
{{- if and .Values.metrics.rules.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule") -}}true{{- end -}}
{{- end -}}

{{/* env and envFrom of a process's containers (main and migrate): (dict "root" $ "p" $process) */}}
{{- define "parley.containerEnv" -}}
{{- $root := .root -}}
{{- $p := .p -}}
envFrom:
  - configMapRef:
      name: {{ $p.name }}
env:
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  - name: POD_NAMESPACE
    valueFrom:
      fieldRef:
        fieldPath: metadata.namespace
  - name: OTEL_RESOURCE_ATTRIBUTES
    value: {{ printf "service.namespace=parley,service.version=%s,k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME),k8s.deployment.name=%s,parley.process=%s%s" (default $root.Chart.AppVersion $root.Values.image.tag) $p.name $p.process (ternary (printf ",deployment.environment=%s" $root.Values.tracing.environment) "" (not (empty $root.Values.tracing.environment))) | quote }}
  - name: PARLEY_NATS_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "parley.sharedSecretName" $root }}
        key: {{ $root.Values.sharedSecret.natsUrlKey }}
  - name: PARLEY_SERVICE_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ include "parley.sharedSecretName" $root }}
        key: {{ $root.Values.sharedSecret.serviceTokenKey }}
        # Only a component that calls others cannot start without it.
        optional: {{ empty $p.calls }}
  {{- if $p.hasDatabase }}
  - name: PARLEY_DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ $p.databaseSecretName }}
        key: {{ $p.databaseSecretKey }}
  {{- end }}
  {{- range $envName, $key := $p.secretEnv }}
  - name: {{ $envName }}
    valueFrom:
      secretKeyRef:
        name: {{ $p.secretName }}
        key: {{ $key }}
  {{- end }}
  {{- range $envName, $key := $p.secretFiles }}
  - name: {{ $envName }}
    value: {{ printf "/etc/parley/secrets/%s" $key | quote }}
  {{- end }}
{{- end -}}

{{/* volumeMounts of a process's containers. */}}
{{- define "parley.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: auth
  mountPath: /etc/parley/auth
  readOnly: true
{{- if .p.secretFiles }}
- name: secret-files
  mountPath: /etc/parley/secrets
  readOnly: true
{{- end }}
{{- end -}}
