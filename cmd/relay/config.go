package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/kelseyhightower/envconfig"
)

// configError turns an error of envconfig.Process into one line for a
// person: the variable, its value and what is expected, as in
// `RELAY_MAX_MESSAGE_BYTES="lots": want an integer`, without Go's field
// and type names or strconv's wording. Values are shown only for the
// types below (numbers, booleans, durations), never for secrets.
func configError(err error) error {
	var pe *envconfig.ParseError
	if !errors.As(err, &pe) {
		return err
	}
	want, ok := expected(pe.TypeName)
	if !ok {
		return fmt.Errorf("%s: invalid value", pe.KeyName)
	}
	if errors.Is(pe.Err, strconv.ErrRange) {
		want = "out of range; want " + strings.TrimPrefix(want, "want ")
	}
	return fmt.Errorf("%s=%q: %s", pe.KeyName, pe.Value, want)
}

// expected says what a value of the Go type named typ looks like.
func expected(typ string) (string, bool) {
	switch typ {
	case "int", "int8", "int16", "int32", "int64":
		return "want an integer", true
	case "uint", "uint8", "uint16", "uint32", "uint64":
		return "want a non-negative integer", true
	case "float32", "float64":
		return "want a number", true
	case "bool":
		return "want true or false", true
	case "time.Duration":
		return "want a duration such as 10s, 250ms or 1m30s", true
	}
	return "", false
}
