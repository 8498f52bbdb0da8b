package node

import "testing"

func TestGlob(t *testing.T) {
	for _, tt := range []struct {
		pattern, name string
		want          bool
	}{
		{"", "anything", true},
		{"chat:1", "chat:1", true},
		{"chat:1", "chat:10", false},
		{"chat:*", "chat:1", true},
		{"chat:*", "chat:", true},
		{"chat:*", "news", false},
		{"*:lobby", "chat:lobby", true},
		{"*:lobby", "chat:lobby2", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "acb", false},
		{"a*a", "a", false},
		{"*", "", true},
		{"**", "x", true},
	} {
		if got := glob(tt.pattern, tt.name); got != tt.want {
			t.Errorf("glob(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}
