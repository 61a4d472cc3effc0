{{/* The release's full name: "kubemaas-operator" for a release named kubemaas. */}}
{{- define "kubemaas.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (.Values.nameOverride | default "operator") | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubemaas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "kubemaas.fullname" .) -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubemaas.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "kubemaas.fullname" .) -}}
{{- end -}}

{{- define "kubemaas.selectorLabels" -}}
app.kubernetes.io/name: kubemaas-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubemaas.labels" -}}
{{ include "kubemaas.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
Permissions on namespaced objects; the same rules as manifests/base/rbac/operator.yaml (a test
compares them). A ClusterRole for every namespace, or a Role per watched namespace.
*/}}
{{- define "kubemaas.namespacedRules" -}}
# Watch the custom resources; status is the only part the operator writes.
- apiGroups: [kubemaas.io]
  resources: [modelservices, trainingjobs]
  verbs: [get, list, watch]
- apiGroups: [kubemaas.io]
  resources: [modelservices/status, trainingjobs/status]
  verbs: [get, patch]
# Children: server-side apply (create the first time, patch after), delete what is no longer wanted.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# Each model server admits traffic on its gRPC and metrics ports only.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch]
# metric cpu: an HPA per ModelService, deleted when it goes back to the concurrency autoscaler.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
# TrainingJob attempts: one Indexed Job each, deleted when the group restarts.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Pods are read for status (scheduler messages, crash reasons), never written.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# kopf reports handler failures as Events on the object; the autoscaler reports each scale.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{- define "kubemaas.clusterRules" -}}
# Gang admission: a TrainingJob starts only when the nodes have room for its whole group,
# counting what every pod on them requests, in any namespace.
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# kopf discovers CRDs installed after it started (read-only).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end -}}
