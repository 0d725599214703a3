package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
)

// Client sends one GET per URL and prints, for each, the answer and where the client's socket really went. It is
// what the demo runs inside the client pod: a plain HTTP client that knows nothing about meshcap.
func Client(ctx context.Context, out io.Writer, urls []string) error {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	failed := 0
	for _, u := range urls {
		line, err := get(ctx, hc, u)
		if err != nil {
			failed++
			line = fmt.Sprintf("GET %s -> error: %v", u, err)
		}
		fmt.Fprintln(out, line)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d requests failed", failed, len(urls))
	}
	return nil
}

func get(ctx context.Context, hc *http.Client, url string) (string, error) {
	var local, remote net.Addr
	trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		local, remote = ci.Conn.LocalAddr(), ci.Conn.RemoteAddr()
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", err
	}
	path := "direct"
	if host, _, err := net.SplitHostPort(local.String()); err == nil && strings.HasPrefix(host, "127.") {
		path = "CAPTURED: the kernel connected it to the proxy"
	}
	return fmt.Sprintf("GET %s -> %d %q\n      client socket %s, getpeername %s: %s",
		url, resp.StatusCode, strings.TrimSpace(string(body)), local, remote, path), nil
}
