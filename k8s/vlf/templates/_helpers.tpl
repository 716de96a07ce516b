{{/*
Names and labels.
*/}}
{{- define "vlf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vlf.fullname" -}}
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

{{/* A registry id as a DNS label: lower case, [a-z0-9-]. */}}
{{- define "vlf.dnsId" -}}
{{- regexReplaceAll "[^a-z0-9-]" (lower .) "-" | trimAll "-" -}}
{{- end -}}

{{/* Resource name of one component: (dict "root" $ "component" "sampler" "id" "llava") */}}
{{- /* The PVC of the trainer's checkpoints: training Jobs write it, the evaluator reads it. */}}
{{- define "vlf.checkpointsClaim" -}}
{{- $made := printf "%s-checkpoints" (include "vlf.componentName" (dict "root" . "component" "trainer")) -}}
{{- default $made .Values.trainer.checkpoints.existingClaim -}}
{{- end -}}

{{- define "vlf.componentName" -}}
{{- $base := include "vlf.fullname" .root -}}
{{- if .id -}}
{{- printf "%s-%s-%s" $base .component (include "vlf.dnsId" .id) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" $base .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vlf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vlf.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .id }}
vlf.io/id: {{ include "vlf.dnsId" .id }}
{{- end }}
{{- end -}}

{{- define "vlf.labels" -}}
{{ include "vlf.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: vlf
{{- end -}}

{{/* Labels shared by every object of the release, for objects that belong to no component. */}}
{{- define "vlf.releaseLabels" -}}
{{ include "vlf.labels" (dict "root" . "component" "common") }}
{{- end -}}

{{/*
Images: (dict "image" .Values.common.image "root" $)
*/}}
{{- define "vlf.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s/%s@%s" .image.registry .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" .image.registry .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Secret names. */}}
{{- define "vlf.kafkaSecretName" -}}
{{- default (printf "%s-kafka" (include "vlf.fullname" .)) .Values.common.kafka.existingSecret -}}
{{- end -}}

{{- define "vlf.ledgerSecretName" -}}
{{- default (printf "%s-ledger" (include "vlf.fullname" .)) .Values.common.ledger.existingSecret -}}
{{- end -}}

{{- define "vlf.apiKeysSecretName" -}}
{{- printf "%s-api-keys" (include "vlf.fullname" .) -}}
{{- end -}}

{{/* Name of the env var holding an entry's API key: VLF_API_KEY_<ID>. */}}
{{- define "vlf.apiKeyEnv" -}}
{{- printf "VLF_API_KEY_%s" (regexReplaceAll "[^A-Z0-9]" (upper .) "_") -}}
{{- end -}}

{{/* True (non-empty) when the entry has an API key. */}}
{{- define "vlf.hasApiKey" -}}
{{- $key := .apiKey | default dict -}}
{{- if or $key.value $key.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Env var of an entry's API key, read from its Secret. */}}
{{- define "vlf.apiKeyEnvVar" -}}
{{- $key := .entry.apiKey | default dict -}}
{{- if include "vlf.hasApiKey" .entry }}
- name: {{ include "vlf.apiKeyEnv" .entry.id }}
  valueFrom:
    secretKeyRef:
      {{- if $key.existingSecret }}
      name: {{ $key.existingSecret }}
      key: {{ default "api-key" $key.existingSecretKey }}
      {{- else }}
      name: {{ include "vlf.apiKeysSecretName" .root }}
      key: {{ include "vlf.apiKeyEnv" .entry.id }}
      {{- end }}
{{- end }}
{{- end -}}

{{/* Service URL of a sampler's vLLM server. */}}
{{- define "vlf.vllmBaseUrl" -}}
{{- printf "http://%s:%v/v1" (include "vlf.componentName" (dict "root" .root "component" "vllm" "id" .entry.id)) .root.Values.vllm.port -}}
{{- end -}}

{{/* A sampler's chat template override: a key of the registry ConfigMap, mounted beside it. */}}
{{- define "vlf.chatTemplateFile" -}}
{{- printf "chat-template-%s.jinja" .id -}}
{{- end -}}

{{/*
The model + judge registry read by every service (VLF_REGISTRY_PATH).
*/}}
{{- define "vlf.registry" -}}
{{- $root := . -}}
models:
{{- range .Values.samplers }}
  - id: {{ .id | quote }}
    backend: {{ .backend | quote }}
    model: {{ .model | quote }}
    {{- if and .vllm .vllm.enabled }}
    base_url: {{ include "vlf.vllmBaseUrl" (dict "root" $root "entry" .) | quote }}
    {{- else if .baseUrl }}
    base_url: {{ .baseUrl | quote }}
    {{- end }}
    {{- with .sampling }}
    sampling:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if .systemPrompt }}
    system_prompt: {{ .systemPrompt | quote }}
    {{- end }}
    {{- if .imageUrlBase }}
    image_url_base: {{ .imageUrlBase | quote }}
    {{- end }}
    {{- if .chatTemplate }}
    chat_template: {{ printf "/etc/vlf/registry/%s" (include "vlf.chatTemplateFile" .) | quote }}
    {{- end }}
    concurrency: {{ default 4 .concurrency }}
    {{- if include "vlf.hasApiKey" . }}
    api_key_env: {{ include "vlf.apiKeyEnv" .id }}
    {{- end }}
    price_per_1k_input: {{ default 0 .pricePer1kInput }}
    price_per_1k_output: {{ default 0 .pricePer1kOutput }}
{{- else }} []
{{- end }}
judges:
{{- range .Values.judges }}
  - id: {{ .id | quote }}
    {{- if eq (default "llm" .kind) "verifiable" }}
    kind: verifiable
    {{- else }}
    backend: {{ .backend | quote }}
    model: {{ .model | quote }}
    {{- if .baseUrl }}
    base_url: {{ .baseUrl | quote }}
    {{- end }}
    mode: {{ default "all_in_one" .mode }}
    structured_output: {{ .structuredOutput | default false }}
    {{- if include "vlf.hasApiKey" . }}
    api_key_env: {{ include "vlf.apiKeyEnv" .id }}
    {{- end }}
    price_per_1k_input: {{ default 0 .pricePer1kInput }}
    {{- if not (kindIs "invalid" .pricePer1kCachedInput) }}
    price_per_1k_cached_input: {{ .pricePer1kCachedInput }}
    {{- end }}
    price_per_1k_output: {{ default 0 .pricePer1kOutput }}
    batch: {{ .batch | default false }}
    {{- if .batchPriceRatio }}
    batch_price_ratio: {{ .batchPriceRatio }}
    {{- end }}
    {{- end }}
{{- else }} []
{{- end }}
{{- end -}}

{{/*
Environment common to every service container.
*/}}
{{- define "vlf.commonEnv" -}}
{{- $c := .Values.common -}}
- name: VLF_HTTP_HOST
  value: "0.0.0.0"
- name: VLF_HTTP_PORT
  value: {{ $c.httpPort | quote }}
- name: VLF_LOG_JSON
  value: {{ $c.logJson | quote }}
- name: VLF_KAFKA_BOOTSTRAP_SERVERS
  value: {{ $c.kafka.bootstrapServers | quote }}
- name: VLF_KAFKA_SECURITY_PROTOCOL
  value: {{ $c.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL" $c.kafka.securityProtocol }}
- name: VLF_KAFKA_SASL_MECHANISM
  value: {{ $c.kafka.saslMechanism | quote }}
- name: VLF_KAFKA_SASL_USERNAME
  value: {{ $c.kafka.saslUsername | quote }}
- name: VLF_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "vlf.kafkaSecretName" . }}
      key: {{ $c.kafka.existingSecretPasswordKey }}
{{- end }}
{{- if $c.kafka.caSecret }}
- name: VLF_KAFKA_SSL_CAFILE
  value: /etc/vlf/kafka-ca/{{ $c.kafka.caSecretKey }}
{{- end }}
- name: VLF_LEDGER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "vlf.ledgerSecretName" . }}
      key: {{ $c.ledger.existingSecretKey }}
- name: VLF_BLOB_URL
  value: {{ $c.blob.url | quote }}
- name: VLF_REGISTRY_PATH
  value: /etc/vlf/registry/registry.yaml
- name: HOME
  value: /tmp
{{- with $c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* envFrom of every service container. */}}
{{- define "vlf.commonEnvFrom" -}}
{{- with .Values.common.blob.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end -}}

{{/* Volumes of every service pod (the mounts are in vlf.commonVolumeMounts). */}}
{{- define "vlf.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.common.tmpSizeLimit }}
- name: registry
  configMap:
    name: {{ include "vlf.fullname" . }}-registry
{{- if .Values.common.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.common.kafka.caSecret }}
{{- end }}
{{- with .Values.common.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "vlf.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: registry
  mountPath: /etc/vlf/registry
  readOnly: true
{{- if .Values.common.kafka.caSecret }}
- name: kafka-ca
  mountPath: /etc/vlf/kafka-ca
  readOnly: true
{{- end }}
{{- with .Values.common.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "vlf.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  initialDelaySeconds: 10
  periodSeconds: 15
  timeoutSeconds: 5
  failureThreshold: 4
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* Resources with nvidia.com/gpu added when gpus > 0: (dict "resources" ... "gpus" n) */}}
{{- define "vlf.resources" -}}
{{- $res := deepCopy (.resources | default dict) -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" (int .gpus)) ($res.requests | default dict)) -}}
{{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) ($res.limits | default dict)) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/*
Scheduling of a pod: the GPU node pool when gpus > 0, then the entry's own settings, and a
preferred spread over nodes for a Deployment's replicas unless the entry sets podAntiAffinity.
(dict "root" $ "spec" <values with nodeSelector/tolerations/affinity> "gpus" n "selector" <ctx of vlf.selectorLabels, or nil>)
*/}}
{{- define "vlf.scheduling" -}}
{{- $pool := .root.Values.common.gpuNodePool -}}
{{- $gpu := gt (int .gpus) 0 -}}
{{- $nodeSelector := .spec.nodeSelector | default dict -}}
{{- $tolerations := .spec.tolerations | default list -}}
{{- $affinity := .spec.affinity | default dict -}}
{{- if $gpu -}}
{{- $nodeSelector = merge (deepCopy $nodeSelector) ($pool.nodeSelector | default dict) -}}
{{- $tolerations = concat ($pool.tolerations | default list) $tolerations -}}
{{- $affinity = merge (deepCopy $affinity) ($pool.affinity | default dict) -}}
{{- end -}}
{{- if and .selector (not $affinity.podAntiAffinity) -}}
{{- /* Spread replicas over nodes when possible, so one node loss leaves the consumer running. */}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "vlf.selectorLabels" .selector | fromYaml)) -}}
{{- $spread := dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term)) -}}
{{- $affinity = merge (deepCopy $affinity) (dict "podAntiAffinity" $spread) -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
A service Deployment. Arguments (dict):
  root       the chart context ($)
  component  sampler | annotator | pair-builder | trainer | evaluator
  id         registry id for samplers and judges, "" otherwise
  module     python module run with `python -m`
  spec       the component's values (replicaCount, resources, nodeSelector, tolerations, affinity, extraEnv)
  gpus       GPUs of the pod (the CUDA image and the GPU pool when > 0)
  image      the image values to run instead (optional; default chosen by gpus)
  env        extra env entries (YAML list as a string)
  keda       true when a ScaledObject owns the replica count
  serviceAccount  name of the ServiceAccount ("" for none)
  extraVolumes, extraVolumeMounts  YAML lists as strings
*/}}
{{- define "vlf.deployment" -}}
{{- $root := .root -}}
{{- $c := $root.Values.common -}}
{{- $name := include "vlf.componentName" . -}}
{{- $gpus := int (default 0 .gpus) -}}
{{- $image := .image | default (ternary $c.gpuImage $c.image (gt $gpus 0)) -}}
{{- $ctx := dict "root" $root "component" .component "id" .id }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "vlf.labels" $ctx | nindent 4 }}
spec:
  {{- if not .keda }}
  replicas: {{ .spec.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 3
  {{- with .strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "vlf.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "vlf.labels" $ctx | nindent 8 }}
      annotations:
        checksum/registry: {{ include "vlf.registry" $root | sha256sum }}
    spec:
      {{- if .serviceAccount }}
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: true
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      {{- with $c.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      securityContext:
        {{- toYaml $c.podSecurityContext | nindent 8 }}
      {{- with include "vlf.scheduling" (dict "root" $root "spec" .spec "gpus" $gpus "selector" $ctx) }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "vlf.image" (dict "image" $image "root" $root) }}
          imagePullPolicy: {{ $image.pullPolicy }}
          command: ["python", "-m", {{ .module | quote }}]
          ports:
            - name: http
              containerPort: {{ $c.httpPort }}
              protocol: TCP
          env:
            {{- include "vlf.commonEnv" $root | nindent 12 }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with .spec.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with include "vlf.commonEnvFrom" $root }}
          {{- . | nindent 10 }}
          {{- end }}
          {{- include "vlf.probes" . | nindent 10 }}
          resources:
            {{- include "vlf.resources" (dict "resources" .spec.resources "gpus" $gpus) | nindent 12 }}
          securityContext:
            {{- toYaml $c.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "vlf.commonVolumeMounts" $root | nindent 12 }}
            {{- with .extraVolumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "vlf.commonVolumes" $root | nindent 8 }}
        {{- with .extraVolumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/* The Service in front of a component's HTTP port (probes, /metrics, /info). */}}
{{- define "vlf.service" -}}
{{- $ctx := dict "root" .root "component" .component "id" .id }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "vlf.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "vlf.labels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "vlf.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: http
      port: {{ .root.Values.common.httpPort }}
      targetPort: http
      protocol: TCP
{{- end -}}

{{/* A PodDisruptionBudget for a component. */}}
{{- define "vlf.pdb" -}}
{{- if .root.Values.common.pdb.enabled }}
{{- $ctx := dict "root" .root "component" .component "id" .id }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "vlf.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "vlf.labels" $ctx | nindent 4 }}
spec:
  maxUnavailable: {{ .root.Values.common.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "vlf.selectorLabels" $ctx | nindent 6 }}
{{- end }}
{{- end -}}

{{/* A ServiceMonitor scraping every Service of one component kind. */}}
{{- define "vlf.serviceMonitor" -}}
{{- $sm := .root.Values.common.serviceMonitor -}}
{{- if $sm.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "vlf.componentName" (dict "root" .root "component" .component) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "vlf.labels" (dict "root" .root "component" .component) | nindent 4 }}
    {{- with $sm.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  jobLabel: app.kubernetes.io/component
  selector:
    matchLabels:
      app.kubernetes.io/name: {{ include "vlf.name" .root }}
      app.kubernetes.io/instance: {{ .root.Release.Name }}
      app.kubernetes.io/component: {{ .component }}
  endpoints:
    - port: {{ default "http" .port }}
      path: /metrics
      interval: {{ $sm.interval }}
{{- end }}
{{- end -}}

{{/* A KEDA ScaledObject scaling a sampler or annotator on its consumer group's lag. */}}
{{- define "vlf.scaledObject" -}}
{{- $root := .root -}}
{{- $k := merge (deepCopy (.entry.keda | default dict)) (omit $root.Values.keda "enabled") -}}
{{- $kafka := $root.Values.common.kafka -}}
{{- $name := include "vlf.componentName" . -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "vlf.labels" (dict "root" $root "component" .component "id" .id) | nindent 4 }}
spec:
  scaleTargetRef:
    name: {{ $name }}
  minReplicaCount: {{ $k.minReplicaCount }}
  maxReplicaCount: {{ $k.maxReplicaCount }}
  pollingInterval: {{ $k.pollingInterval }}
  cooldownPeriod: {{ $k.cooldownPeriod }}
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: {{ $kafka.bootstrapServers | quote }}
        consumerGroup: {{ .group | quote }}
        topic: {{ .topic | quote }}
        lagThreshold: {{ $k.lagThreshold | quote }}
        offsetResetPolicy: earliest
        {{- if hasPrefix "SASL" $kafka.securityProtocol }}
        {{- /* KEDA names mechanisms plaintext, scram_sha256, scram_sha512. */}}
        sasl: {{ ternary "plaintext" ($kafka.saslMechanism | lower | replace "-" "_" | replace "sha_" "sha") (eq $kafka.saslMechanism "PLAIN") | quote }}
        {{- end }}
        {{- if hasSuffix "SSL" $kafka.securityProtocol }}
        tls: enable
        {{- end }}
      {{- if or (hasPrefix "SASL" $kafka.securityProtocol) $kafka.caSecret }}
      authenticationRef:
        name: {{ include "vlf.fullname" $root }}-kafka
      {{- end }}
{{- end -}}

{{/*
Every bad value, reported at once.
*/}}
{{- define "vlf.validateValues" -}}
{{- $errors := list -}}
{{- $c := .Values.common -}}
{{- if not $c.kafka.bootstrapServers -}}
{{- $errors = append $errors "common.kafka.bootstrapServers: required (the Kafka bootstrap servers)" -}}
{{- end -}}
{{- if and (hasPrefix "SASL" $c.kafka.securityProtocol) (not $c.kafka.saslMechanism) -}}
{{- $errors = append $errors (printf "common.kafka.saslMechanism: required with securityProtocol %s" $c.kafka.securityProtocol) -}}
{{- end -}}
{{- if hasPrefix "SASL" $c.kafka.securityProtocol -}}
{{- if or (not $c.kafka.saslUsername) (and (not $c.kafka.saslPassword) (not $c.kafka.existingSecret)) -}}
{{- $errors = append $errors (printf "common.kafka: securityProtocol %s needs credentials: saslUsername and existingSecret (a Secret holding the password under existingSecretPasswordKey) or saslPassword; a dev broker without auth takes securityProtocol PLAINTEXT" $c.kafka.securityProtocol) -}}
{{- end -}}
{{- if and $c.kafka.saslPassword $c.kafka.existingSecret -}}
{{- $errors = append $errors "common.kafka: set saslPassword or existingSecret, not both" -}}
{{- end -}}
{{- end -}}
{{- if and (not $c.ledger.url) (not $c.ledger.existingSecret) -}}
{{- $errors = append $errors "common.ledger: set url or existingSecret (the ledger's SQLAlchemy URL)" -}}
{{- end -}}
{{- if not $c.blob.url -}}
{{- $errors = append $errors "common.blob.url: required (e.g. s3://bucket/vlf)" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $i, $s := .Values.samplers -}}
{{- $where := printf "samplers[%d]" $i -}}
{{- if not $s.id -}}
{{- $errors = append $errors (printf "%s.id: required" $where) -}}
{{- else -}}
{{- $where = printf "samplers[%d] (%s)" $i $s.id -}}
{{- $dns := include "vlf.dnsId" $s.id -}}
{{- if hasKey $seen $dns -}}
{{- $errors = append $errors (printf "%s: duplicate sampler id (same name as %s)" $where (get $seen $dns)) -}}
{{- else -}}
{{- $_ := set $seen $dns $s.id -}}
{{- end -}}
{{- end -}}
{{- if not (has $s.backend (list "openai" "transformers" "vllm")) -}}
{{- $errors = append $errors (printf "%s.backend: %v is not one of openai, transformers, vllm" $where $s.backend) -}}
{{- end -}}
{{- if not $s.model -}}
{{- $errors = append $errors (printf "%s.model: required" $where) -}}
{{- end -}}
{{- $vllmOn := and $s.vllm $s.vllm.enabled -}}
{{- if and (eq (toString $s.backend) "openai") (not $s.baseUrl) (not $vllmOn) -}}
{{- $errors = append $errors (printf "%s: an openai backend needs baseUrl or vllm.enabled" $where) -}}
{{- end -}}
{{- if $vllmOn -}}
{{- if ne (toString $s.backend) "openai" -}}
{{- $errors = append $errors (printf "%s: vllm.enabled serves the model over HTTP, so backend must be openai" $where) -}}
{{- end -}}
{{- if or (not $.Values.vllm.image.repository) (not $.Values.vllm.image.tag) -}}
{{- $errors = append $errors (printf "%s: vllm.enabled needs vllm.image.repository and vllm.image.tag" $where) -}}
{{- end -}}
{{- if lt (int (default 0 $s.vllm.gpus)) 1 -}}
{{- $errors = append $errors (printf "%s.vllm.gpus: a vLLM server needs at least 1 GPU" $where) -}}
{{- end -}}
{{- end -}}
{{- if and (gt (int (default 0 $s.gpus)) 0) (eq (toString $s.backend) "openai") -}}
{{- $errors = append $errors (printf "%s.gpus: an openai backend runs no model in the sampler pod; give the GPUs to vllm.gpus" $where) -}}
{{- end -}}
{{- if and $s.apiKey $s.apiKey.value $s.apiKey.existingSecret -}}
{{- $errors = append $errors (printf "%s.apiKey: set value or existingSecret, not both" $where) -}}
{{- end -}}
{{- end -}}
{{- $seenJudges := dict -}}
{{- range $i, $j := .Values.judges -}}
{{- $where := printf "judges[%d]" $i -}}
{{- if not $j.id -}}
{{- $errors = append $errors (printf "%s.id: required" $where) -}}
{{- else -}}
{{- $where = printf "judges[%d] (%s)" $i $j.id -}}
{{- $dns := include "vlf.dnsId" $j.id -}}
{{- if hasKey $seenJudges $dns -}}
{{- $errors = append $errors (printf "%s: duplicate judge id (same name as %s)" $where (get $seenJudges $dns)) -}}
{{- else -}}
{{- $_ := set $seenJudges $dns $j.id -}}
{{- end -}}
{{- end -}}
{{- if ne (default "llm" $j.kind) "verifiable" -}}
{{- if not (has $j.backend (list "openai" "transformers" "vllm")) -}}
{{- $errors = append $errors (printf "%s.backend: %v is not one of openai, transformers, vllm" $where $j.backend) -}}
{{- end -}}
{{- if not $j.model -}}
{{- $errors = append $errors (printf "%s.model: required" $where) -}}
{{- end -}}
{{- if eq (toString $j.backend) "openai" -}}
{{- if not $j.baseUrl -}}
{{- $errors = append $errors (printf "%s.baseUrl: required for an openai backend" $where) -}}
{{- end -}}
{{- if not (include "vlf.hasApiKey" $j) -}}
{{- $errors = append $errors (printf "%s.apiKey: set value or existingSecret (the judge's API key)" $where) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $j.apiKey $j.apiKey.value $j.apiKey.existingSecret -}}
{{- $errors = append $errors (printf "%s.apiKey: set value or existingSecret, not both" $where) -}}
{{- end -}}
{{- end -}}
{{- if .Values.trainer.jobPolicy.enabled -}}
{{- if semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version -}}
{{- $errors = append $errors (printf "trainer.jobPolicy.enabled: the ValidatingAdmissionPolicy needs Kubernetes 1.30 or later (this is %s); set it false on older clusters" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- $pod := $c.podSecurityContext | default dict -}}
{{- $ctr := $c.containerSecurityContext | default dict -}}
{{- if not (or $pod.runAsNonRoot $ctr.runAsNonRoot) -}}
{{- $errors = append $errors "trainer.jobPolicy.enabled: the policy admits only non-root training Jobs: set common.podSecurityContext.runAsNonRoot or common.containerSecurityContext.runAsNonRoot true" -}}
{{- end -}}
{{- if or $ctr.privileged $ctr.allowPrivilegeEscalation (and $ctr.capabilities $ctr.capabilities.add) -}}
{{- $errors = append $errors "trainer.jobPolicy.enabled: the policy refuses privileged training Jobs: common.containerSecurityContext sets privileged, allowPrivilegeEscalation or capabilities.add" -}}
{{- end -}}
{{- end -}}
{{- if lt (int .Values.trainer.job.gpus) 0 -}}
{{- $errors = append $errors "trainer.job.gpus: must be 0 (CPU) or more" -}}
{{- end -}}
{{- if gt (int .Values.evaluator.replicaCount) 1 -}}
{{- $errors = append $errors "evaluator.replicaCount: at most 1 (its jobs are child processes of the pod: every replica would run every queued evaluation)" -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\n\nVALUES VALIDATION:\n  - %s" (join "\n  - " $errors)) -}}
{{- end -}}
{{- end -}}

{{/* Non-empty when any sampler runs a vLLM server. */}}
{{- define "vlf.anyVllm" -}}
{{- range .Values.samplers -}}
{{- if and .vllm .vllm.enabled -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Egress. Every pod may reach DNS, the cluster's pods (common.networkPolicy.clusterPeers) and
extraEgress; the internet (any address outside blockedCidrs and metadataCidrs) only the workloads
listed by vlf.internetEgressTargets, each through its own NetworkPolicy (policies add up).
*/}}

{{/* Non-empty when the host of a URL is in the cluster: (dict "url" ... "root" $) */}}
{{- define "vlf.inClusterUrl" -}}
{{- $domain := .root.Values.common.networkPolicy.clusterDomain | trimPrefix "." | trimSuffix "." | lower -}}
{{- $host := regexReplaceAll ":[0-9]+$" (urlParse .url).host "" | trimSuffix "." | lower -}}
{{- if and $host (not (hasPrefix "[" $host)) -}}
{{- if or (not (contains "." $host)) (hasSuffix ".svc" $host) (hasSuffix (printf ".svc.%s" $domain) $host) (hasSuffix (printf ".%s" $domain) $host) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* Non-empty when the blob store is a cloud bucket reached over the internet. */}}
{{- define "vlf.cloudBlob" -}}
{{- $url := .Values.common.blob.url | toString | lower -}}
{{- if and (regexMatch "^(s3|s3a|gs|gcs|az|abfs|abfss)://" $url) (not .Values.common.networkPolicy.blobInCluster) -}}true{{- end -}}
{{- end -}}

{{/* Non-empty when a model is loaded from the Hugging Face Hub (not a path on a volume). */}}
{{- define "vlf.fromHub" -}}
{{- if and .root.Values.common.networkPolicy.hubEgress (not (hasPrefix "/" (toString .model))) -}}true{{- end -}}
{{- end -}}

{{/*
The workloads that need the internet, and why: a YAML list of {component, id, why}. A component
that needs it as a whole (a cloud blob store, the hub for Jobs and the evaluator) is one entry
without id; per sampler or judge otherwise.
*/}}
{{- define "vlf.internetEgressTargets" -}}
{{- $root := . -}}
{{- $targets := list -}}
{{- $whole := dict -}}
{{- if include "vlf.cloudBlob" . -}}
{{- $why := printf "the blob store %s is a cloud bucket" .Values.common.blob.url -}}
{{- range (list "sampler" "annotator" "pair-builder" "training-job" "evaluator") -}}
{{- $_ := set $whole . $why -}}
{{- end -}}
{{- end -}}
{{- if .Values.common.networkPolicy.hubEgress -}}
{{- range (list "training-job" "evaluator") -}}
{{- $_ := set $whole . (join "; " (compact (list (get $whole .) "model weights come from the Hugging Face Hub (hubEgress)"))) -}}
{{- end -}}
{{- end -}}
{{- range $component := (list "sampler" "annotator" "pair-builder" "training-job" "evaluator") -}}
{{- if hasKey $whole $component -}}
{{- $targets = append $targets (dict "component" $component "id" "" "why" (get $whole $component)) -}}
{{- end -}}
{{- end -}}
{{- range $entries := (list (dict "component" "sampler" "items" .Values.samplers) (dict "component" "annotator" "items" .Values.judges)) -}}
{{- range $e := $entries.items -}}
{{- $why := list -}}
{{- $vllmOn := and $e.vllm $e.vllm.enabled -}}
{{- $inProcess := has (toString $e.backend) (list "transformers" "vllm") -}}
{{- $external := and $e.imageUrlBase (not (include "vlf.inClusterUrl" (dict "url" $e.imageUrlBase "root" $root))) -}}
{{- if eq (default "llm" $e.kind) "verifiable" -}}
{{- else if $inProcess -}}
{{- if include "vlf.fromHub" (dict "root" $root "model" $e.model) -}}
{{- $why = append $why (printf "the in-process %s backend loads %s from the Hugging Face Hub (hubEgress)" $e.backend $e.model) -}}
{{- end -}}
{{- if $external -}}
{{- $why = append $why (printf "images are fetched from imageUrlBase %s" $e.imageUrlBase) -}}
{{- end -}}
{{- else if and (not $vllmOn) $e.baseUrl (not (include "vlf.inClusterUrl" (dict "url" $e.baseUrl "root" $root))) -}}
{{- $why = append $why (printf "baseUrl %s is outside the cluster" $e.baseUrl) -}}
{{- end -}}
{{- if and $why (not (hasKey $whole $entries.component)) -}}
{{- $targets = append $targets (dict "component" $entries.component "id" $e.id "why" (join "; " $why)) -}}
{{- end -}}
{{- if $vllmOn -}}
{{- $serverWhy := list -}}
{{- if include "vlf.fromHub" (dict "root" $root "model" $e.model) -}}
{{- $serverWhy = append $serverWhy (printf "the vLLM server loads %s from the Hugging Face Hub (hubEgress)" $e.model) -}}
{{- end -}}
{{- if $external -}}
{{- $serverWhy = append $serverWhy (printf "the vLLM server fetches images from imageUrlBase %s" $e.imageUrlBase) -}}
{{- end -}}
{{- if $serverWhy -}}
{{- $targets = append $targets (dict "component" "vllm" "id" $e.id "why" (join "; " $serverWhy)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $targets -}}
{{- end -}}

{{/* Peers covering every address but the given CIDRs (IPv4 and IPv6): (list "169.254.0.0/16" ...) */}}
{{- define "vlf.addressesExcept" -}}
{{- $v4 := list -}}
{{- $v6 := list -}}
{{- range . -}}
{{- if contains ":" . -}}
{{- $v6 = append $v6 . -}}
{{- else -}}
{{- $v4 = append $v4 . -}}
{{- end -}}
{{- end -}}
{{- $peers := list -}}
{{- range $block := (list (dict "cidr" "0.0.0.0/0" "except" ($v4 | uniq)) (dict "cidr" "::/0" "except" ($v6 | uniq))) -}}
{{- $peers = append $peers (dict "ipBlock" (ternary $block (omit $block "except") (gt (len $block.except) 0))) -}}
{{- end -}}
{{- toYaml $peers -}}
{{- end -}}

{{/* The internet: every address outside blockedCidrs and metadataCidrs. */}}
{{- define "vlf.internetPeers" -}}
{{- $np := .Values.common.networkPolicy -}}
{{- include "vlf.addressesExcept" (concat $np.blockedCidrs $np.metadataCidrs) -}}
{{- end -}}

{{/* The training Job's image, command and ServiceAccount: the Job template and the policy that
pins the trainer's Jobs to them both read these. The CUDA image carries the [train] extra; it
trains on CPU too when gpus is 0. */}}
{{- define "vlf.trainingImage" -}}
{{- include "vlf.image" (dict "image" .Values.common.gpuImage "root" .) -}}
{{- end -}}

{{- define "vlf.trainingCommand" -}}
- accelerate
- launch
- --config_file=/etc/vlf/trainer-job/accelerate.yaml
- -m
- services.trainer.job
- --job-id
- $(VLF_TRAINER_JOB_ID)
{{- end -}}

{{- define "vlf.trainingServiceAccount" -}}
{{- include "vlf.componentName" (dict "root" . "component" "training-job") -}}
{{- end -}}
