{{/*
Alert rule groups (YAML list). Prometheus templating in annotations is written [[ ... ]] here and
turned into {{ ... }} at the end, so Helm leaves it alone. Metric names come from docs/telemetry.md.
*/}}
{{- define "parley.ruleGroups" -}}
{{- $t := .Values.metrics.rules.thresholds -}}
{{- $ns := "" -}}
{{- if .Values.metrics.rules.namespaceScoped -}}{{- $ns = printf "namespace=%q," .Release.Namespace -}}{{- end -}}
{{- $hooks := printf "%sservice=\"channel-gateway\",route=~%q" $ns .Values.metrics.rules.webhookRouteRegex -}}
{{- $runbook := .Values.metrics.rules.runbookBaseUrl -}}
{{- $faults := "UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS|UNIMPLEMENTED" -}}
- name: parley.webhooks
  rules:
    - alert: ParleyWebhook5xxRateHigh
      expr: |
        sum by (route) (rate(parley_http_requests_total{ {{- $hooks }},status=~"5.."}[5m]))
          / sum by (route) (rate(parley_http_requests_total{ {{- $hooks }}}[5m]))
          > {{ $t.webhook5xxRatio }}
      for: 5m
      labels:
        severity: critical
        team: parley
      annotations:
        summary: "Webhooks on [[ $labels.route ]] answer 5xx ([[ $value | humanizePercentage ]])"
        description: >-
          More than {{ mulf $t.webhook5xxRatio 100 }}% of webhook requests on [[ $labels.route ]] were answered
          5xx for 5 minutes. The gateway answers 5xx when it cannot store events durably in JetStream, so
          providers retry; nothing is lost yet, but Meta disables webhooks that keep failing.
        runbook: >-
          1) Check NATS: `nats server report jetstream` and the gateway web logs for publish errors
          (timeouts, "no responders", stream full). 2) Check the stream's storage (max_bytes, disk) and
          replicas' health; a lost JetStream quorum stops every publish. 3) Check the web pods'
          readiness and recent deploys; roll back a bad release with `helm rollback`. 4) Once fixed, the
          provider retries on its own; watch inbound rate recover on the platform overview.
        runbook_url: {{ printf "%sparleywebhook5xxratehigh" $runbook | quote }}
    - alert: ParleyWebhookLatencyHigh
      expr: |
        histogram_quantile(0.99, sum by (le) (rate(parley_http_request_duration_seconds_bucket{ {{- $hooks }}}[5m])))
          > {{ $t.webhookLatencyP99Seconds }}
      for: 10m
      labels:
        severity: warning
        team: parley
      annotations:
        summary: "Webhook p99 latency is [[ $value | humanizeDuration ]]"
        description: >-
          The 99th percentile of webhook handling time has been above {{ $t.webhookLatencyP99Seconds }}s for
          10 minutes. Providers time out slow webhooks (Meta after a few seconds) and retry them.
        runbook: >-
          1) Compare with JetStream publish latency: slow acks mean NATS disk or replication trouble.
          2) Check web pod CPU and the HPA (at maxReplicas?); raise maxReplicas or requests.
          3) Check gunicorn worker saturation in the web logs; add replicas before adding workers.
        runbook_url: {{ printf "%sparleywebhooklatencyhigh" $runbook | quote }}
- name: parley.events
  rules:
    - alert: ParleyConsumerLagGrowing
      expr: |
        max by (service, consumer) (parley_consumer_pending_messages{ {{- trimSuffix "," $ns }}}) > {{ $t.consumerPendingMessages }}
          and
        max by (service, consumer) (deriv(parley_consumer_pending_messages{ {{- trimSuffix "," $ns }}}[15m])) > 0
      for: 15m
      labels:
        severity: warning
        team: parley
      annotations:
        summary: "Consumer [[ $labels.consumer ]] of [[ $labels.service ]] is falling behind ([[ $value ]] pending)"
        description: >-
          The durable consumer [[ $labels.consumer ]] has more than {{ $t.consumerPendingMessages }} undelivered
          messages and the backlog has kept growing for 15 minutes: messages become visible late.
        runbook: >-
          1) Look at the service's RED dashboard: handler duration and nak/dead_letter outcomes. Slow
          handlers usually mean a slow database or a slow downstream gRPC call. 2) If handlers are healthy
          but saturated, scale the service (replicas share the durable pull consumer; ack-pending is
          bounded by max_ack_pending). 3) If handlers fail and nak, fix the cause; the backlog drains
          on its own afterwards.
        runbook_url: {{ printf "%sparleyconsumerlaggrowing" $runbook | quote }}
    - alert: ParleyMessagesDeadLettered
      expr: |
        sum by (service, consumer) (increase(parley_events_processed_total{ {{- $ns }}outcome="dead_letter"}[15m])) > 0
      labels:
        severity: warning
        team: parley
      annotations:
        summary: "[[ $value | humanize ]] messages dead-lettered by [[ $labels.consumer ]]"
        description: >-
          The consumer [[ $labels.consumer ]] of [[ $labels.service ]] moved messages to the dead-letter subject
          in the last 15 minutes: they failed max_deliver times or can never be processed (undecodable,
          invalid). They are kept, not lost, but nobody sees them until replayed.
        runbook: >-
          1) Read the service's logs for the dead-letter reason (trace id and event id are logged).
          2) Inspect them: stream <SERVICE>_DEAD_LETTER, subject dead_letter.<service>.<consumer>
          (`nats stream view`); the header Parley-Dead-Letter-Reason says why. 3) Fix the cause
          (a bug, a missing record in another service, bad provider payload), then republish the
          messages to their original subject; consumers are idempotent, replays are safe.
        runbook_url: {{ printf "%sparleymessagesdeadlettered" $runbook | quote }}
- name: parley.outbound
  rules:
    - alert: ParleyOutboundFailureRateHigh
      expr: |
        sum by (provider) (rate(parley_channel_gateway_outbound_sends_total{ {{- $ns }}status="failed"}[10m]))
          / sum by (provider) (rate(parley_channel_gateway_outbound_sends_total{ {{- trimSuffix "," $ns }}}[10m]))
          > {{ $t.outboundFailureRatio }}
      for: 10m
      labels:
        severity: warning
        team: parley
      annotations:
        summary: "[[ $value | humanizePercentage ]] of [[ $labels.provider ]] sends fail"
        description: >-
          More than {{ mulf $t.outboundFailureRatio 100 }}% of outbound sends to [[ $labels.provider ]] ended
          failed (after retries) over 10 minutes. Agents' replies are not reaching contacts.
        runbook: >-
          1) Open "Provider calls by outcome" on the platform overview: rate_limited points at pacing,
          client_error at expired tokens or policy (24-hour window, templates), server_error or
          network_error at the provider or egress. 2) Check the worker logs for the provider's error
          codes. 3) Expired channel tokens need the channel reconnected; provider outages need
          waiting: failed sends keep their recorded status and can be resent.
        runbook_url: {{ printf "%sparleyoutboundfailureratehigh" $runbook | quote }}
- name: parley.services
  rules:
    - alert: ParleyGrpcErrorRateHigh
      expr: |
        sum by (service) (rate(parley_rpc_requests_total{ {{- $ns }}code=~{{ $faults | quote }}}[5m]))
          / sum by (service) (rate(parley_rpc_requests_total{ {{- trimSuffix "," $ns }}}[5m]))
          > {{ $t.grpcErrorRatio }}
      for: 10m
      labels:
        severity: critical
        team: parley
      annotations:
        summary: "[[ $labels.service ]] fails [[ $value | humanizePercentage ]] of its RPCs"
        description: >-
          More than {{ mulf $t.grpcErrorRatio 100 }}% of [[ $labels.service ]]'s RPCs ended with a server fault
          ({{ $faults | replace "|" ", " }}) for 10 minutes. Client errors (INVALID_ARGUMENT, NOT_FOUND,
          PERMISSION_DENIED...) are not counted.
        runbook: >-
          1) The service RED dashboard shows which method and code. 2) UNAVAILABLE: the service or one it
          calls is down or NOT_SERVING (NATS or database unreachable); check pods and their readiness.
          DEADLINE_EXCEEDED: slow database or downstream. INTERNAL/UNKNOWN: a bug; read the logs by
          trace id. 3) Roll back a bad release with `helm rollback`.
        runbook_url: {{ printf "%sparleygrpcerrorratehigh" $runbook | quote }}
    - alert: ParleyPodsNotReady
      expr: |
        sum by (namespace, deployment) (kube_deployment_spec_replicas{namespace={{ .Release.Namespace | quote }},deployment=~{{ printf "%s-.*" (include "parley.fullname" .) | quote }}})
          - sum by (namespace, deployment) (kube_deployment_status_replicas_available{namespace={{ .Release.Namespace | quote }},deployment=~{{ printf "%s-.*" (include "parley.fullname" .) | quote }}})
          > 0
      for: 10m
      labels:
        severity: warning
        team: parley
      annotations:
        summary: "[[ $value ]] pods of [[ $labels.deployment ]] are not ready"
        description: >-
          [[ $labels.deployment ]] has had fewer available replicas than desired for 10 minutes
          (needs kube-state-metrics).
        runbook: >-
          1) `kubectl describe pod` and `kubectl logs -c migrate` / the main container: a failing
          migration, a missing Secret key ("couldn't find key"), an image pull error or a crash at boot
          (settings errors are printed by name). 2) Not ready but running: gRPC health is NOT_SERVING
          while NATS or the database is unreachable; fix the dependency. 3) Pending: not enough
          resources or a topology spread that cannot be met.
        runbook_url: {{ printf "%sparleypodsnotready" $runbook | quote }}
    - alert: ParleyServiceNotServing
      expr: |
        min by (service) (parley_service_serving{ {{- trimSuffix "," $ns }}}) == 0
      for: 5m
      labels:
        severity: warning
        team: parley
      annotations:
        summary: "A process of [[ $labels.service ]] has reported NOT_SERVING for 5 minutes"
        description: >-
          A [[ $labels.service ]] process is up but its health says NOT_SERVING: it lost NATS or its
          database, so it is out of its Service's endpoints.
        runbook: >-
          1) The process logs say which dependency is missing ("NATS connection lost" or database
          errors). 2) Check NATS and PostgreSQL reachability (NetworkPolicy egress peers included).
          3) The process recovers by itself when the dependency returns.
        runbook_url: {{ printf "%sparleyservicenotserving" $runbook | quote }}
- name: parley.contacts
  rules:
    - alert: ParleyTagDeletionStuck
      expr: |
        time() - max(parley_contacts_tag_deletion_oldest_timestamp_seconds{ {{- trimSuffix "," $ns }}} > 0)
          > {{ $t.tagDeletionStuckSeconds }}
      for: 5m
      labels:
        severity: warning
        team: parley
      annotations:
        summary: "A deleted tag's contacts are still being untagged after [[ $value | humanizeDuration ]]"
        description: >-
          A tag deleted more than {{ $t.tagDeletionStuckSeconds }}s ago still has contacts carrying it. Reads
          already hide it, but the background loop of the contacts service has not finished untagging its
          contacts, so their tag.removed events (and whatever automations wait for them) are still to come.
        runbook: >-
          1) Read the contacts logs for "finishing tag deletions failed" and its traceback (database errors,
          lock or statement timeouts). 2) Look at rate(parley_contacts_tag_deletion_untagged_total[5m]): above
          zero, the loop is still working through a very large tag (about 1,000 contacts per 0.4 s); wait.
          At zero, look in the contacts database for what blocks it: long transactions and locks on its
          contacts (pg_stat_activity, pg_locks); the pending tags are
          `SELECT id, space_id, name, deleted_at FROM tags WHERE deleted_at IS NOT NULL`. 3) Once fixed, the
          loop resumes by itself within PARLEY_CONTACTS_TAG_DELETION_INTERVAL_SECONDS (or restart a contacts
          pod); chunks already untagged stay done.
        runbook_url: {{ printf "%sparleytagdeletionstuck" $runbook | quote }}
{{- end -}}
