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

{{/* The Secret holding a role's cluster certificate ((list $ "node"|"edge"|"sender")): made
by cert-manager when certManager.enabled, else clusterTls.<role>Secret; empty: none. */}}
{{- define "skein.pkiSecret" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
{{- if $.Values.certManager.enabled -}}
{{- printf "%s-%s-pki" (include "skein.fullname" $) $role -}}
{{- else -}}
{{- index $.Values.clusterTls (printf "%sSecret" $role) -}}
{{- end -}}
{{- end -}}

{{/* cert-manager's Secrets name their files ca.crt, tls.crt and tls.key: mount them under
the names [cluster_tls] reads. */}}
{{- define "skein.pkiItems" -}}
{{- if .Values.certManager.enabled -}}
items:
  - { key: ca.crt, path: ca.pem }
  - { key: tls.crt, path: cert.pem }
  - { key: tls.key, path: key.pem }
{{- end -}}
{{- end -}}

{{/* The edge's SMTP certificate Secret: edge.tlsSecret, else cert-manager's when it makes
one (certManager.smtpDnsNames); empty: none. */}}
{{- define "skein.smtpSecret" -}}
{{- if .Values.edge.tlsSecret -}}
{{- .Values.edge.tlsSecret -}}
{{- else if and .Values.certManager.enabled .Values.certManager.smtpDnsNames -}}
{{- printf "%s-smtp-tls" (include "skein.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Where traces go (OTLP over gRPC), as container env entries; nothing when unset. */}}
{{- define "skein.otlpEnv" -}}
{{- with .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}
