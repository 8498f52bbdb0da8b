package nodetest

import (
	"reflect"
	"testing"

	"github.com/kelseyhightower/envconfig"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestConfigDefaults: every field of Config and RedisConfig is cmd/relay's
// default, as envconfig reads the default tags, except the deliberate test
// overrides listed here (and commented in Config).
func TestConfigDefaults(t *testing.T) {
	checkDefaults(t, "Config()", Config(), "Addr", "DrainSeconds",
		"ProtoMaxChannels", "ProtoCommandRate", "ProtoCommandBurst", "ProtoMaxErrors", "ProtoErrorWindow")
	checkDefaults(t, "RedisConfig(url)", RedisConfig("redis://127.0.0.1:1/0"), "URL")
	if cfg := Config(); cfg.Validate() != nil {
		t.Errorf("Config().Validate() = %v", cfg.Validate())
	}
	if cfg := RedisConfig("redis://127.0.0.1:1/0"); cfg.Validate() != nil {
		t.Errorf("RedisConfig(url).Validate() = %v", cfg.Validate())
	}
}

// checkDefaults fails t when a field of got differs from its default tag
// (zero without one) and is not in overrides, or is in overrides and does
// not differ. The defaults are envconfig's own reading of the tags: each
// variable with a default set to it under a prefix nothing else uses, so
// that neither the environment nor envconfig's unprefixed fallback names
// leak in.
func checkDefaults[T any](t *testing.T, name string, got T, overrides ...string) {
	t.Helper()
	const prefix = "NODETEST_DEFAULTS"
	typ := reflect.TypeFor[T]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if def, ok := f.Tag.Lookup("default"); ok {
			t.Setenv(prefix+"_"+f.Tag.Get("envconfig"), def)
		}
	}
	var parsed, want T
	if err := envconfig.Process(prefix, &parsed); err != nil {
		t.Fatal(err)
	}
	for i := range typ.NumField() {
		if _, ok := typ.Field(i).Tag.Lookup("default"); ok {
			reflect.ValueOf(&want).Elem().Field(i).Set(reflect.ValueOf(parsed).Field(i))
		}
	}
	over := make(map[string]bool)
	for _, o := range overrides {
		over[o] = true
	}
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range typ.NumField() {
		field := typ.Field(i).Name
		if gv.Field(i).Kind() == reflect.Func {
			if !gv.Field(i).IsNil() {
				t.Errorf("%s.%s is set, want nil", name, field)
			}
			continue
		}
		same := reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface())
		switch {
		case !same && !over[field]:
			t.Errorf("%s.%s = %v, want %v (the default tag), or list it as a test override", name, field, gv.Field(i), wv.Field(i))
		case same && over[field]:
			t.Errorf("%s.%s = %v, the default tag: no override, drop it from the list", name, field, gv.Field(i))
		}
	}
}
