{{/* The scheduler's flags, shared by the Deployment and the RayService. */}}
{{- define "modelfleet.scheduler.args" -}}
- scheduler
- --kubernetes
- --host=0.0.0.0
- --port={{ .Values.scheduler.httpPort }}
- --scrape-period={{ .Values.scheduler.scrapePeriodSeconds }}
- --log-level={{ .Values.scheduler.logLevel }}
{{- with .Values.scheduler.watchNamespace }}
- --namespace={{ . }}
{{- end }}
{{- range .Values.scheduler.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Ports, probes, env, resources, security context and mounts of a scheduler container. */}}
{{- define "modelfleet.scheduler.container" -}}
env:
  - name: PYTHONDONTWRITEBYTECODE
    value: "1"
  - name: HOME
    value: /tmp
ports:
  - name: http
    containerPort: {{ .Values.scheduler.httpPort }}
    protocol: TCP
  - name: control
    containerPort: {{ .Values.scheduler.controlPort }}
    protocol: TCP
readinessProbe:
  httpGet:
    path: /health
    port: http
  periodSeconds: 5
livenessProbe:
  httpGet:
    path: /health
    port: http
  initialDelaySeconds: 30
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 6
resources:
  {{- toYaml .Values.scheduler.resources | nindent 2 }}
securityContext:
  {{- include "modelfleet.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  - name: control-token
    mountPath: /var/run/modelfleet/control
    readOnly: true
{{- end }}

{{- define "modelfleet.scheduler.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
- name: control-token
  secret:
    secretName: {{ include "modelfleet.controlTokenSecret" . }}
    items:
      - key: token
        path: token
{{- end }}

{{/* Ray writes its session files under /tmp and its object store in /dev/shm. */}}
{{- define "modelfleet.scheduler.rayMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
- name: control-token
  mountPath: /var/run/modelfleet/control
  readOnly: true
{{- end }}

{{- define "modelfleet.scheduler.rayVolumes" -}}
{{ include "modelfleet.scheduler.volumes" . }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: 1Gi
{{- end }}
