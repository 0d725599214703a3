package matrix

import (
	"strings"
)

// DefaultMirror is used when the machine's apt sources name no Debian mirror.
const DefaultMirror = "http://deb.debian.org/debian"

// DebianMirror returns the first Debian archive URI in apt sources text (one-line "deb URI suite ..." or deb822
// "URIs:" stanzas), skipping the security archive; DefaultMirror when there is none.
func DebianMirror(sources string) string {
	for _, line := range strings.Split(sources, "\n") {
		f := strings.Fields(strings.TrimSpace(line))
		var uris []string
		switch {
		case len(f) >= 3 && f[0] == "deb":
			uris = f[1:2]
			if strings.HasPrefix(f[1], "[") { // deb [options] URI suite
				for i := 1; i < len(f); i++ {
					if strings.HasSuffix(f[i], "]") && i+1 < len(f) {
						uris = f[i+1 : i+2]
						break
					}
				}
			}
		case len(f) >= 2 && f[0] == "URIs:":
			uris = f[1:]
		}
		for _, u := range uris {
			u = strings.TrimRight(u, "/")
			if strings.HasSuffix(u, "/debian") {
				return u
			}
		}
	}
	return DefaultMirror
}
