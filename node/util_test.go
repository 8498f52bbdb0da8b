package node_test

import (
	"encoding/json"
	"fmt"
	"net/http"
)

func jsonDecode(resp *http.Response, v any) error {
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		return fmt.Errorf("Content-Type %q", ct)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
