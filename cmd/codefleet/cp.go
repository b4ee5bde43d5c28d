package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/nats-io/nuid"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// `codefleet cp SRC DST` copies files between this machine and a conversation's workspace, as
// cp -r does: one side is CONVERSATION:PATH, the other a local path or - (stdin or stdout).
//
// Symbolic links are never followed out of what is copied. Uploading, the source operand
// itself is followed (it is what the user named), and a directory is read through an os.Root:
// a link inside it whose target stays inside it (by a relative path) is copied as the file it
// points to, and a link that leads out of it (or is absolute, or points to a directory, which
// could loop) is skipped with a warning. Downloading, the fleet never follows links either
// (they are listed, and skipped here with a warning), and the files are written through an
// os.Root of the destination, so neither a listed path nor a link already in the destination
// can put a file outside it. Each file lands whole: written beside its name, then renamed.

const cpSummary = `Copies files between this machine and a conversation's workspace, as cp -r does.
One of SRC and DST is CONVERSATION:PATH (the conversation's id, a colon, a path in its
workspace: relative to it, or absolute under it; "demo:" is the workspace itself); the other is
a local path, or - for stdin (SRC) or stdout (DST). Directories are copied with their whole
tree; into DST when it is a directory, else to DST. Files keep their permission bits.
Symbolic links are not followed out of the source: a local one that stays inside the directory
copied is copied as its file, others (and every link in a workspace) are skipped with a warning.
A local name with a colon before any slash is written ./name.`

func cmdCp(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	flags := config.New("codefleet cp", stderr)
	flags.Summary = cpSummary
	flags.ArgsUsage = "SRC DST"
	var c common
	// The conversation is the operand's: the tenant flag alone of the conversation's flags.
	flags.StringVar(&c.tenant, "tenant", protocol.DefaultTenant, "tenant")
	if err := c.parse(flags, args, false); err != nil {
		return err
	}
	if len(flags.Args()) != 2 {
		return fmt.Errorf("cp takes two arguments, SRC and DST, got %d (see --help)", len(flags.Args()))
	}
	// Checked before connecting: a mistyped command line needs no fleet to be told so.
	src, dst := parseOperand(flags.Args()[0]), parseOperand(flags.Args()[1])
	switch {
	case src.conv == "" && dst.conv == "":
		return fmt.Errorf("neither %q nor %q names a conversation: one of them must be CONVERSATION:PATH", src.arg, dst.arg)
	case src.conv != "" && dst.conv != "":
		return fmt.Errorf("both %q and %q name a conversation: copy through a local directory", src.arg, dst.arg)
	}
	nc, err := c.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	cl, err := client.New(nc, client.WithTenant(c.tenant), client.WithPrefix(c.prefix))
	if err != nil {
		return err
	}
	cp := copier{stderr: stderr}
	if src.conv != "" {
		cp.conv = cl.Conversation(src.conv)
		err = cp.download(ctx, src.path, dst.path, stdout)
	} else {
		cp.conv = cl.Conversation(dst.conv)
		err = cp.upload(ctx, src.path, dst.path, stdin)
	}
	return c.refused(err)
}

// operand is an argument of cp: a conversation's path, or a local one (conv empty).
type operand struct {
	arg, conv, path string
}

// parseOperand reads CONVERSATION:PATH, as scp reads HOST:PATH: a colon before any slash, after
// a valid conversation id. Anything else is local.
func parseOperand(arg string) operand {
	if conv, p, ok := strings.Cut(arg, ":"); ok && protocol.ValidID(conv) {
		return operand{arg: arg, conv: conv, path: p}
	}
	return operand{arg: arg, path: arg}
}

type copier struct {
	conv   *client.Conversation
	stderr io.Writer
}

func (cp *copier) warn(format string, args ...any) {
	fmt.Fprintf(cp.stderr, "codefleet: "+format+"\n", args...)
}

// remoteName is the last element of a workspace path, "" for the workspace itself.
func remoteName(p string) string {
	if b := path.Base(path.Clean("/" + p)); b != "/" {
		return b
	}
	return ""
}

// upload copies the local src (a file, a directory, or - for stdin) to dst in the workspace.
func (cp *copier) upload(ctx context.Context, src, dst string, stdin io.Reader) error {
	if src == "-" {
		if remoteName(dst) == "" || strings.HasSuffix(dst, "/") {
			return fmt.Errorf("copying stdin needs a file name: %s:%s is a directory", cp.conv.ID(), dst)
		}
		_, err := cp.conv.PutFile(ctx, dst, stdin, -1, nil)
		return err
	}
	st, err := os.Stat(src) // the operand itself is followed, as cp does
	if err != nil {
		return err
	}
	into, err := cp.remoteDir(ctx, dst)
	if err != nil {
		return err
	}
	target := dst
	if into {
		abs, err := filepath.Abs(src)
		if err != nil {
			return err
		}
		target = path.Join(dst, filepath.Base(abs))
	}
	if !st.IsDir() {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		return cp.putFile(ctx, f, target)
	}
	return cp.putTree(ctx, src, target)
}

// remoteDir reports whether dst is a directory of the workspace, to copy into: it names one
// ("", ".", a trailing slash) or lists as one. A path that lists as no directory (a file,
// nothing) is the copy's own name.
func (cp *copier) remoteDir(ctx context.Context, dst string) (bool, error) {
	if remoteName(dst) == "" || strings.HasSuffix(dst, "/") {
		return true, nil
	}
	_, err := cp.conv.ListFiles(ctx, dst, false)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, &protocol.Error{Code: protocol.CodeFileNotFound}), errors.Is(err, &protocol.Error{Code: protocol.CodeFileFailed}):
		return false, nil
	}
	return false, err
}

// putFile puts the open local file f at remote, with its permission bits.
func (cp *copier) putFile(ctx context.Context, f *os.File, remote string) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", f.Name())
	}
	_, err = cp.conv.PutFile(ctx, remote, f, st.Size(), &client.FileOptions{Mode: st.Mode().Perm()})
	return err
}

// putTree puts the tree of the local directory src under remote.
func (cp *copier) putTree(ctx context.Context, src, remote string) error {
	root, err := os.OpenRoot(src)
	if err != nil {
		return err
	}
	defer root.Close()
	var dirs []string
	filled := map[string]bool{} // directories with a file put beneath them
	err = fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		shown := filepath.Join(src, filepath.FromSlash(name))
		switch t := d.Type(); {
		case d.IsDir():
			dirs = append(dirs, name)
			return nil
		case t&fs.ModeSymlink != 0:
			st, err := root.Stat(name) // refused when the link leaves src
			switch {
			case err != nil:
				reason := err // "path escapes from parent", "no such file or directory"...
				var pe *fs.PathError
				if errors.As(err, &pe) {
					reason = pe.Err
				}
				cp.warn("skipped %s: a symbolic link, not followed: %v", shown, reason)
				return nil
			case st.IsDir():
				cp.warn("skipped %s: a symbolic link to a directory, not followed", shown)
				return nil
			case !st.Mode().IsRegular():
				cp.warn("skipped %s: a symbolic link to something not a regular file", shown)
				return nil
			}
		case !t.IsRegular():
			cp.warn("skipped %s: not a regular file", shown)
			return nil
		}
		f, err := root.Open(name) // a link is followed only inside src
		if err != nil {
			return err
		}
		err = cp.putFile(ctx, f, path.Join(remote, name))
		f.Close()
		if err != nil {
			return err
		}
		for dir := path.Dir(name); !filled[dir]; dir = path.Dir(dir) {
			filled[dir] = true
			if dir == "." {
				break
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if !filled[d] {
			cp.warn("skipped %s: an empty directory (a put makes the directories of the files it writes, and no others)", filepath.Join(src, filepath.FromSlash(d)))
		}
	}
	return nil
}

// download copies src in the workspace (a file or a directory) to the local dst, or a file to
// stdout when dst is -.
func (cp *copier) download(ctx context.Context, src, dst string, stdout io.Writer) error {
	list, err := cp.conv.ListFiles(ctx, src, true)
	isDir := err == nil
	if err != nil && !errors.Is(err, &protocol.Error{Code: protocol.CodeFileFailed}) {
		return err // not found, refused, ...: a get would say the same
	}
	// A list of something that is not a directory fails; it is a file, or the get says what.
	if dst == "-" {
		if isDir {
			return fmt.Errorf("%s:%s is a directory: it cannot be written to stdout", cp.conv.ID(), src)
		}
		_, err := cp.conv.GetFile(ctx, src, stdout)
		return err
	}
	target := dst
	if st, err := os.Stat(dst); err == nil && st.IsDir() {
		target = filepath.Join(dst, remoteName(src))
	}
	if !isDir {
		root, err := os.OpenRoot(filepath.Dir(target))
		if err != nil {
			return err
		}
		defer root.Close()
		return cp.getFile(ctx, root, filepath.Base(target), src)
	}
	return cp.getTree(ctx, list, src, target)
}

// getTree writes the tree list (a recursive list of the workspace's directory src) under the
// local directory target, made when missing.
func (cp *copier) getTree(ctx context.Context, list *protocol.FileResult, src, target string) error {
	if list.Truncated {
		return fmt.Errorf("%s:%s holds more than %d entries, more than one list tells: copy its directories one by one", cp.conv.ID(), src, protocol.MaxListEntries)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(target)
	if err != nil {
		return err
	}
	defer root.Close()
	prefix := listPrefix(list)
	for _, e := range list.Entries {
		rel, ok := strings.CutPrefix(e.Path, prefix)
		name := filepath.FromSlash(rel)
		if !ok || !filepath.IsLocal(name) {
			return fmt.Errorf("the fleet listed %q in %s:%s, which is not under it", e.Path, cp.conv.ID(), src)
		}
		switch e.Type {
		case protocol.FileTypeDir:
			err = root.MkdirAll(name, 0o755)
		case protocol.FileTypeFile:
			if err = root.MkdirAll(filepath.Dir(name), 0o755); err == nil {
				err = cp.getFile(ctx, root, name, e.Path)
			}
		case protocol.FileTypeSymlink:
			cp.warn("skipped %s:%s: a symbolic link (file requests never follow one)", cp.conv.ID(), e.Path)
		default:
			cp.warn("skipped %s:%s: not a regular file", cp.conv.ID(), e.Path)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// listPrefix returns what the paths of a list's entries start with: the listed directory's
// path relative to the workspace and a slash, or "" for the workspace itself. The list's Path
// says it; without one, the parent of its shallowest entry does.
func listPrefix(list *protocol.FileResult) string {
	dir := list.Path
	if dir == "" && len(list.Entries) > 0 {
		shallowest := list.Entries[0].Path
		for _, e := range list.Entries {
			if strings.Count(e.Path, "/") < strings.Count(shallowest, "/") {
				shallowest = e.Path
			}
		}
		dir = path.Dir(shallowest)
	}
	if dir == "" || dir == "." {
		return ""
	}
	return dir + "/"
}

// getFile writes the workspace's file remote to name in root: beside it first, renamed into
// place once whole and checked, with the file's permission bits.
func (cp *copier) getFile(ctx context.Context, root *os.Root, name, remote string) error {
	tmp := filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".codefleet-"+nuid.Next())
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	info, err := cp.conv.GetFile(ctx, remote, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		mode, perr := protocol.ParseMode(info.Mode)
		if perr != nil {
			mode = 0o644
		}
		if err = root.Chmod(tmp, fs.FileMode(mode)); err == nil {
			err = root.Rename(tmp, name)
		}
	}
	if err != nil {
		root.Remove(tmp)
		return err
	}
	return nil
}
