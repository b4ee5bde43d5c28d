package config

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Log formats accepted by NewLogger.
const (
	LogFormatJSON    = "json"
	LogFormatConsole = "console"
)

// NewLogger returns a logger writing to w at level ("trace", "debug", "info", "warn", "error";
// empty means info), with a timestamp (TimeFormat) on every event. format is "json" (the default, also when
// empty) or "console" (human-readable, coloured when w is a terminal). It never touches
// zerolog's global logger or global level.
func NewLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl := zerolog.InfoLevel
	if level != "" {
		l, err := zerolog.ParseLevel(strings.ToLower(strings.TrimSpace(level)))
		if err != nil || l == zerolog.NoLevel {
			return zerolog.Nop(), fmt.Errorf("unknown log level %q (want trace, debug, info, warn or error)", level)
		}
		lvl = l
	}
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "", LogFormatJSON:
	case LogFormatConsole:
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: TimeFormat, NoColor: !isTerminal(w)}
	default:
		return zerolog.Nop(), fmt.Errorf("unknown log format %q (want json or console)", format)
	}
	return zerolog.New(w).Level(lvl).Hook(timestampHook{}), nil
}

// TimeFormat is the format of the log timestamps: RFC 3339 in UTC with milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// timestampHook stamps every event with the time in TimeFormat. zerolog's own Timestamp()
// formats with a package-level setting (seconds by default), which a library must not change.
type timestampHook struct{}

func (timestampHook) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	e.Str(zerolog.TimestampFieldName, time.Now().UTC().Format(TimeFormat))
}

// Logger returns a logger on stderr as NewLogger does. A bad level or format does not stop the
// program: the logger falls back to info and JSON and says what was wrong in its first event.
func Logger(level, format string) zerolog.Logger {
	log, err := NewLogger(os.Stderr, level, format)
	if err != nil {
		log, _ = NewLogger(os.Stderr, "", "")
		log.Warn().Err(err).Msg("logger configuration ignored")
	}
	return log
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
