package test

import (
	"strconv"
	"strings"
)

func itoa(n int) string { return strconv.Itoa(n) }

func containsLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == strings.TrimSpace(line) {
			return true
		}
	}
	return false
}
