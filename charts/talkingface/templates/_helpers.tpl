{{/* Names, labels and the pieces every talkingface pod shares. */}}

{{- define "talkingface.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "talkingface.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "api") */}}
{{- define "talkingface.selectorLabels" -}}
app.kubernetes.io/name: {{ include "talkingface.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Ray pods are labelled by KubeRay too (it may set app.kubernetes.io/name: kuberay), so
they are selected by labels KubeRay never sets: the release, part-of and component. */}}
{{- define "talkingface.raySelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: talkingface
app.kubernetes.io/component: ray
{{- end }}

{{/* Every pod of the release (Ray pods included). */}}
{{- define "talkingface.releaseSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: talkingface
{{- end }}

{{- define "talkingface.labels" -}}
{{ include "talkingface.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: talkingface
{{- end }}

{{/* Labels of release-wide objects (no component). */}}
{{- define "talkingface.commonLabels" -}}
app.kubernetes.io/name: {{ include "talkingface.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: talkingface
{{- end }}

{{- define "talkingface.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "talkingface.rayServiceName" -}}
{{- printf "%s-ray" (include "talkingface.fullname" .) }}
{{- end }}

{{/* KubeRay's default name of a RayService's serve Service, set explicitly. */}}
{{- define "talkingface.serveServiceName" -}}
{{- printf "%s-serve-svc" (include "talkingface.rayServiceName" .) }}
{{- end }}

{{/* A setting's value as the string Settings.from_env parses (numbers via JSON: no 1e+06). */}}
{{- define "talkingface.settingValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* Redis endpoint and its password Secret. */}}
{{- define "talkingface.redisHost" -}}
{{- if .Values.redis.enabled }}{{ printf "%s-redis" (include "talkingface.fullname" .) }}{{ else }}{{ required "externalRedis.host is required when redis.enabled is false" .Values.externalRedis.host }}{{ end }}
{{- end }}

{{- define "talkingface.redisPort" -}}
{{- if .Values.redis.enabled }}6379{{ else }}{{ .Values.externalRedis.port }}{{ end }}
{{- end }}

{{- define "talkingface.redisSecretName" -}}
{{- $existing := ternary .Values.redis.auth.existingSecret .Values.externalRedis.existingSecret .Values.redis.enabled }}
{{- default (printf "%s-redis" (include "talkingface.fullname" .)) $existing }}
{{- end }}

{{- define "talkingface.redisSecretKey" -}}
{{- if include "talkingface.redisSecretCreate" . }}redis-password{{ else }}
{{- ternary .Values.redis.auth.existingSecretPasswordKey .Values.externalRedis.existingSecretPasswordKey .Values.redis.enabled }}
{{- end }}
{{- end }}

{{- define "talkingface.redisSecretCreate" -}}
{{- if and .Values.redis.enabled (not .Values.redis.auth.existingSecret) }}true{{ else if and (not .Values.redis.enabled) (not .Values.externalRedis.existingSecret) }}true{{ end }}
{{- end }}

{{/* Object store endpoint (host:port) and its keys' Secret. */}}
{{- define "talkingface.objectStoreEndpoint" -}}
{{- if .Values.objectStore.enabled }}{{ printf "%s-objectstore:%v" (include "talkingface.fullname" .) .Values.objectStore.port }}{{ else }}{{ required "externalObjectStore.endpoint is required when objectStore.enabled is false" .Values.externalObjectStore.endpoint }}{{ end }}
{{- end }}

{{- define "talkingface.objectStoreSecretName" -}}
{{- default (printf "%s-objectstore" (include "talkingface.fullname" .)) .Values.objectStore.auth.existingSecret }}
{{- end }}

{{/* The stage plane's secret (TALKINGFACE_STAGE_SECRET): signs and checks stage capabilities. */}}
{{- define "talkingface.stageSecretName" -}}
{{- default (printf "%s-stage-plane" (include "talkingface.fullname" .)) .Values.stagePlane.existingSecret }}
{{- end }}

{{/* Environment of every talkingface container: (dict "ctx" $ "settings" <component settings> ["noStageSecret" true]) */}}
{{- define "talkingface.env" -}}
{{- $ctx := .ctx -}}
envFrom:
  - configMapRef:
      name: {{ include "talkingface.fullname" $ctx }}-settings
env:
  - name: HOME
    value: /tmp
  - name: REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "talkingface.redisSecretName" $ctx }}
        key: {{ include "talkingface.redisSecretKey" $ctx }}
  - name: TALKINGFACE_REDIS_URL
    value: {{ printf "%s://:$(REDIS_PASSWORD)@%s:%s/%v" (ternary "rediss" "redis" (and (not $ctx.Values.redis.enabled) $ctx.Values.externalRedis.tls)) (include "talkingface.redisHost" $ctx) (include "talkingface.redisPort" $ctx) (ternary 0 $ctx.Values.externalRedis.database $ctx.Values.redis.enabled) | quote }}
  - name: TALKINGFACE_MINIO_ACCESS_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "talkingface.objectStoreSecretName" $ctx }}
        key: {{ $ctx.Values.objectStore.auth.accessKeyKey }}
  - name: TALKINGFACE_MINIO_SECRET_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "talkingface.objectStoreSecretName" $ctx }}
        key: {{ $ctx.Values.objectStore.auth.secretKeyKey }}
  {{- if not .noStageSecret }}
  - name: TALKINGFACE_STAGE_SECRET
    valueFrom:
      secretKeyRef:
        name: {{ include "talkingface.stageSecretName" $ctx }}
        key: {{ $ctx.Values.stagePlane.existingSecretKey }}
  {{- end }}
  {{- range $key, $value := .settings }}
  - name: {{ printf "TALKINGFACE_%s" (upper $key) }}
    value: {{ include "talkingface.settingValue" $value | quote }}
  {{- end }}
  {{- with $ctx.Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Scratch volumes (the root filesystem is read-only): /tmp and the cache directory. */}}
{{- define "talkingface.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratch.tmpSizeLimit }}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.scratch.cacheSizeLimit }}
{{- end }}

{{- define "talkingface.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /var/cache/talkingface
{{- end }}

{{- define "talkingface.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling fields of a workload's values: nodeSelector, tolerations, affinity. */}}
{{- define "talkingface.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The Ray Serve config (files/serve_config.yaml -> services/serve_config.yaml); without a
GPU worker group every GPU fraction is 0, as `talkingface up` does on machines without one. */}}
{{- define "talkingface.serveConfig" -}}
{{- $config := .Files.Get "files/serve_config.yaml" | fromYaml }}
{{- if not .Values.ray.gpuWorkers.enabled }}
{{- range $app := $config.applications }}
{{- range $deployment := $app.deployments }}
{{- if $deployment.ray_actor_options }}
{{- $_ := set $deployment.ray_actor_options "num_gpus" 0 }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}
