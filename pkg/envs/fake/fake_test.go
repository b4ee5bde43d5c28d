package fake_test

import (
	"testing"

	"github.com/codefleet/codefleet/pkg/envs/envtest"
	"github.com/codefleet/codefleet/pkg/envs/fake"
)

func TestConformance(t *testing.T) {
	envtest.Run(t, envtest.Config{Env: fake.New(), MaxOutput: 256 << 10})
}
