{{/* The release's name prefix, at most 40 characters (pod names add "-node-N"). */}}
{{- define "skein.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "skein.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "skein.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The queue nodes' stable gRPC addresses, as a TOML array of strings. */}}
{{- define "skein.nodeAddrs" -}}
{{- $f := include "skein.fullname" . -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.node.replicas) -}}
{{- $addrs = append $addrs (printf "\"%s-node-%d.%s-node.%s.svc.%s:%d\"" $f $i $f $.Release.Namespace $.Values.clusterDomain (int $.Values.node.grpcPort)) -}}
{{- end -}}
[{{ join ", " $addrs }}]
{{- end -}}

{{/* [cluster_tls] for a role whose Secret is mounted at /etc/skein/pki. */}}
{{- define "skein.clusterTls" -}}
[cluster_tls]
ca = "/etc/skein/pki/ca.pem"
cert = "/etc/skein/pki/cert.pem"
key = "/etc/skein/pki/key.pem"
{{- end -}}
