package nodetest

import (
	"reflect"
	"strings"
	"testing"

	"github.com/kelseyhightower/envconfig"
	"go.uber.org/goleak"

	"github.com/relay-pubsub/relay/node"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestConfigDefaults: every field of Config is cmd/relay's default, as
// envconfig reads the default tags of node.Config, except the deliberate
// test overrides listed here (and commented in Config).
func TestConfigDefaults(t *testing.T) {
	overrides := map[string]bool{
		"Addr":              true,
		"DrainSeconds":      true,
		"ProtoMaxChannels":  true,
		"ProtoCommandRate":  true,
		"ProtoCommandBurst": true,
		"ProtoMaxErrors":    true,
		"ProtoErrorWindow":  true,
	}
	// envconfig's own reading of the tags: each variable with a default
	// set to it under a prefix nothing else uses, so that neither the
	// environment nor envconfig's unprefixed fallback names leak in.
	// Fields without a default are zero.
	const prefix = "NODETEST_DEFAULTS"
	typ := reflect.TypeFor[node.Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if def, ok := f.Tag.Lookup("default"); ok {
			t.Setenv(prefix+"_"+f.Tag.Get("envconfig"), def)
		}
	}
	var parsed node.Config
	if err := envconfig.Process(prefix, &parsed); err != nil {
		t.Fatal(err)
	}
	var want node.Config
	for i := range typ.NumField() {
		if _, ok := typ.Field(i).Tag.Lookup("default"); ok {
			reflect.ValueOf(&want).Elem().Field(i).Set(reflect.ValueOf(parsed).Field(i))
		}
	}

	got := Config()
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range typ.NumField() {
		name := typ.Field(i).Name
		same := reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface())
		switch {
		case !same && !overrides[name]:
			t.Errorf("Config().%s = %v, want %v (the default tag), or list it as a test override", name, gv.Field(i), wv.Field(i))
		case same && overrides[name]:
			t.Errorf("Config().%s = %v, the default tag: no override, drop it from the list", name, gv.Field(i))
		}
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Config().Validate() = %v", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
}
