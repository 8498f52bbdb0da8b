package wsout

import (
	"encoding/hex"
	"testing"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAppendHeader(t *testing.T) {
	tests := []struct {
		typ  websocket.MessageType
		n    int
		want string
	}{
		{websocket.MessageText, 0, "8100"},
		{websocket.MessageText, 125, "817d"},
		{websocket.MessageBinary, 126, "827e007e"},
		{websocket.MessageBinary, 65535, "827effff"},
		{websocket.MessageText, 65536, "817f0000000000010000"},
	}
	for _, tt := range tests {
		if got := hex.EncodeToString(AppendHeader(nil, tt.typ, tt.n)); got != tt.want {
			t.Errorf("AppendHeader(%v, %d) = %s, want %s", tt.typ, tt.n, got, tt.want)
		}
	}
}
