package docker

import (
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/agent/wire"
)

// TestAcceptAgent: only a connection that opens with the agent's hello for this connect and
// its token is taken; impostors are closed, and with no agent the acceptor gives up at its
// deadline.
func TestAcceptAgent(t *testing.T) {
	path := filepath.Join(t.TempDir(), socketName)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *agentConn, 1)
	go acceptAgent(ln, "connect-1", "right-token-0123456789", time.Now().Add(10*time.Second), accepted)

	dial := func(hello string) net.Conn {
		t.Helper()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write([]byte(hello + "\n")); err != nil {
			t.Fatal(err)
		}
		return c
	}
	hello := func(id, token string) string {
		b, _ := json.Marshal(wire.Response{Op: wire.OpHello, ID: id, Token: token, Version: wire.ProtocolVersion})
		return string(b)
	}
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil
	}
	for name, h := range map[string]string{
		"wrong token":   hello("connect-1", "wrong-token-0123456789"),
		"no token":      hello("connect-1", ""),
		"wrong connect": hello("connect-2", "right-token-0123456789"),
		"not a hello":   `{"op":"result","id":"connect-1","token":"right-token-0123456789"}`,
		"not json":      "right-token-0123456789",
	} {
		if c := dial(h); !closed(c) {
			t.Errorf("%s: the connection was kept", name)
		}
	}
	select {
	case c := <-accepted:
		t.Fatalf("an impostor was accepted: %v", c)
	default:
	}
	agentSide := dial(hello("connect-1", "right-token-0123456789"))
	c := <-accepted
	if c == nil {
		t.Fatal("the agent's connection was not accepted")
	}
	// It is the agent's connection: what the worker writes, the agent reads.
	c.Write([]byte("ping\n"))
	buf := make([]byte, 5)
	agentSide.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := agentSide.Read(buf); err != nil || string(buf[:n]) != "ping\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	c.Close()

	// Nobody connects: nil at the deadline.
	go acceptAgent(ln, "connect-3", "right-token-0123456789", time.Now().Add(50*time.Millisecond), accepted)
	if c := <-accepted; c != nil {
		t.Fatal("accepted a connection nobody made")
	}
}

// TestClaimNames: a claimed pool sandbox's name reads back as its tenant and conversation, and
// nothing else does.
func TestClaimNames(t *testing.T) {
	long := strings.Repeat("x", 128)
	for _, c := range [][2]string{{"default", "c1"}, {"a-b_c", "-_-"}, {long, long}} {
		name := claimName(c[0], c[1])
		if tenant, conv, ok := claimOf("/" + name); !ok || tenant != c[0] || conv != c[1] {
			t.Errorf("claimOf(claimName(%q, %q)) = %q, %q, %v", c[0], c[1], tenant, conv, ok)
		}
	}
	for _, name := range []string{freeName(), "codefleet-default-c1-0a1b2c3d", "codefleet.t.c", "codefleet.t.c.d.e", "other.t.c.0a1b2c3d", "codefleet..c.0a1b2c3d", "codefleet." + long + "x.c.0a1b2c3d"} {
		if tenant, conv, ok := claimOf(name); ok {
			t.Errorf("claimOf(%q) = %q, %q: want no claim", name, tenant, conv)
		}
	}
}
