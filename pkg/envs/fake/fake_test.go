package fake_test

import (
	"os"
	"testing"

	"github.com/codefleet/codefleet/pkg/envs/envtest"
	"github.com/codefleet/codefleet/pkg/envs/fake"
)

func TestMain(m *testing.M) {
	code := m.Run()
	fake.RemoveRoot()
	os.Exit(code)
}

func TestConformance(t *testing.T) {
	envtest.Run(t, envtest.Config{Env: fake.New(), MaxOutput: 256 << 10})
}
