// Command meshcap-cni is a chained CNI plugin (spec 0.3.0 to 1.1.0) that enrolls mesh pods into meshcap's
// node-wide (agent mode) capture at ADD and unenrolls them at DEL. Conflist entry:
//
//	{"type": "meshcap-cni", "enroll": "annotated", "exclude_namespaces": ["kube-system"],
//	 "capabilities": {"io.kubernetes.cri.pod-annotations": true}}
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/meshcap/meshcap/pkg/cni"
)

func main() {
	skel.PluginMainFuncs(cni.NewPlugin().Funcs(), cni.SupportedVersions, "meshcap-cni: chained CNI plugin enrolling pods into meshcap capture")
}
