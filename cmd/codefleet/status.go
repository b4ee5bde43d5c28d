package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/registry"
)

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	nc, err := c.dial(config.New("codefleet status", stderr), args, false)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	workers, err := registry.List(ctx, js, protocol.Subjects{Prefix: c.prefix})
	if err != nil {
		return c.refused(err)
	}
	if len(workers) == 0 {
		fmt.Fprintf(stdout, "no live workers with prefix %s\n", c.prefix)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tBACKENDS\tSANDBOXES\tCAPACITY\tPOOL FREE\tRUNNING\tDRAINING\tLANGUAGES\tUPDATED")
	for _, info := range workers {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%v\t%s\t%s ago\n", info.ID, strings.Join(info.Backends, ","), info.Load, info.Capacity,
			info.PoolFree, info.Running, info.Draining, strings.Join(info.Languages, ","), time.Since(info.Updated).Round(time.Millisecond))
	}
	return tw.Flush()
}
