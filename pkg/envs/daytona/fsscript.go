package daytona

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/codefleet/codefleet/internal/workspace"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// Each file operation checks its path with a small POSIX sh script sent to /process/execute
// (the toolbox's own stat, list and download follow symbolic links: it cannot tell a link from
// what it points to). The script walks the path from the workspace one element at a time, in
// the same process, refusing an element that is a symbolic link ([ -L ]) and entering each
// directory with cd -P; once in the parent directory it checks that its physical path (pwd -P)
// is the one expected, so that an element swapped for a link between the test and the cd is
// caught, and from there it names the last element relative to that directory only. A put's
// rename into place and a delete are done by the script itself from there; a get's bytes are
// read by the toolbox afterwards (see files.go for the window that leaves).
//
// The script ends with a status line "\n<nonce> <word> <fields>\n", the nonce fresh for each
// operation (the toolbox's answer mixes the script's stdout and stderr; nothing a snippet
// writes can predict it):
//
//	ok ...             what the operation reports (below)
//	absent <i>         the i-th element of the path (from 1) is not there
//	refused link <i>   the i-th element is a symbolic link
//	refused moved 0    the parent directory was not where the walk expected it (a swap)
//	isdir <i>, notfile <i>, notdir <i>   the i-th element is not what the operation needs
//	toolarge <size>    a get's file is larger than its MaxSize
//	badsum <sha256>    a put's file differs from the checksum it was sent with
//	failed <what> <i> [<message>]        anything else (a mkdir, a mv, the tools' own errors)

// fsPrelude defines the helpers every file script uses: say (the status line, then exit),
// here (the physical working directory, trailing newlines of a name kept), enter (the walk),
// meta (size, mode, mtime of a file) and sum256. It expects N (the nonce), W
// (the workspace, empty for the daemon's working directory), K (how many elements to enter), MK
// (1: make the directories missing on the way), P (the path of the K elements, "" or "/a/b")
// and the path's elements as the positional parameters.
const fsPrelude = `exec 2>/dev/null
say() { printf '\n%s %s\n' "$N" "$*"; exit 0; }
here() { x=$(pwd -P; echo .); x=${x%?.}; }
if [ -n "$W" ]; then cd -P -- "$W" || say failed workspace 0; fi
here; W=$x
enter() {
  i=0
  for e in "$@"; do
    i=$((i + 1))
    [ "$i" -le "$K" ] || break
    [ -L "$e" ] && say refused link "$i"
    if [ ! -e "$e" ]; then
      [ "$MK" = 1 ] || say absent "$i"
      mkdir -- "$e" || [ -d "$e" ] || say failed mkdir "$i"
      [ -L "$e" ] && say refused link "$i"
    fi
    [ -d "$e" ] || say notdir "$i"
    cd -P -- "$e" || say failed cd "$i"
  done
  here; [ "$x" = "$W$P" ] || say refused moved 0
}
meta() {
  if x=$(stat -c '%s %a %Y' -- "$1"); then
    set -- $x; s=$1 m=$2 t=$3
  else
    s=$(wc -c < "$1") || return 1; s=$((s + 0)) m=- t=-
  fi
}
sum256() {
  if command -v sha256sum >/dev/null; then
    sha256sum | { read -r h x; printf '%s' "$h"; }
  elif command -v python3 >/dev/null; then
    python3 -c 'import hashlib, sys
h = hashlib.sha256()
for b in iter(lambda: sys.stdin.buffer.read(1 << 20), b""):
    h.update(b)
print(h.hexdigest(), end="")'
  fi
}
`

// fsScript is one file operation's script: its parameters, the prelude, then body.
type fsScript struct {
	nonce   string
	workdir string
	elems   []string
	// enter is how many elements the walk enters; make, whether it makes missing ones.
	enter int
	make  bool
	// vars are more parameters of body, set before the prelude.
	vars map[string]string
	body string
}

// command returns the command line for /process/execute.
func (f fsScript) command() string { return viaSh(f.text()) }

// text returns the script.
func (f fsScript) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "N=%s\nW=%s\nK=%d\nP=%s\n", f.nonce, quote(f.workdir), f.enter, quote(pathOf(f.elems[:f.enter])))
	mk := 0
	if f.make {
		mk = 1
	}
	fmt.Fprintf(&b, "MK=%d\nB=", mk)
	if len(f.elems) > 0 {
		b.WriteString(quote(f.elems[len(f.elems)-1]))
	}
	b.WriteString("\n")
	b.WriteString(exportLines(f.vars)) // sorted, quoted; exported does no harm
	b.WriteString("set --")
	for _, e := range f.elems {
		b.WriteString(" " + quote(e))
	}
	b.WriteString("\n" + fsPrelude + f.body)
	return b.String()
}

// pathOf joins elements into "/a/b" ("" for none), as the script compares it with pwd -P.
func pathOf(elems []string) string {
	if len(elems) == 0 {
		return ""
	}
	return "/" + strings.Join(elems, "/")
}

// Bodies. Each runs after the walk's prelude with B the last element of the path.

// getBody checks a file to read; MAX bounds it, and SUM=1 asks for its SHA-256 (a read from 0
// that will not hold the whole file, so that the worker cannot hash it itself).
const getBody = `enter "$@"
[ -n "$B" ] || say isdir 0
[ -L "./$B" ] && say refused link "$#"
[ -e "./$B" ] || say absent "$#"
[ -d "./$B" ] && say isdir "$#"
[ -f "./$B" ] || say notfile "$#"
meta "./$B" || say failed stat "$#"
[ "$s" -le "$MAX" ] || say toolarge "$s"
h=-
if [ "$SUM" = 1 ] && [ "$s" -gt "$LEN" ]; then
  h=$(sum256 < "./$B"); [ -n "$h" ] || say failed sha256sum 0
fi
say ok "$s" "$m" "$t" "$h" "$W"
`

// prepareBody checks, before the first piece of an upload is stored, that the path could take
// it (what is missing on the way is made at the end); it removes the upload's stage when it
// holds a finished upload of the same id (a new upload), and the stages nobody touched for a
// day (uploads given up).
const prepareBody = `find "$U" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} \;
for x in "$S"/done-*; do [ -e "$x" ] && rm -rf -- "$S"; break; done
enter "$@"
[ -n "$B" ] || say isdir 0
[ -L "./$B" ] && say refused link "$#"
[ -d "./$B" ] && say isdir "$#"
say ok
`

// finishBody puts a file in place from the parts staged in S (PARTS, in order; one part is
// moved, more are joined): it checks the size (SIZE) and the SHA-256 (HAVE when the worker knows
// it, else computed; WANT when the put gave one: else the stage goes and nothing is written),
// sets the mode, walks the path making what is missing, moves the file next to its place under
// a temporary name and renames it there (a reader sees the old file or the whole new one). The
// stage goes whatever happens; for an upload in pieces (DONE=1) a marker of the result stays in
// it, so that a last piece sent again finds the file put.
const finishBody = `trap 'cd /; rm -rf -- "$S"' EXIT
{ [ -L "$U" ] || [ -L "$S" ]; } && say failed stagelink 0
cd -P -- "$S" || say failed stage 0
c=0; for x in $PARTS; do c=$((c + 1)); F=$x; done
if [ "$c" -ne 1 ]; then cat -- $PARTS > whole || say failed join 0; F=whole; fi
F=$(pwd -P)/$F
n=$(wc -c < "$F") || say failed size 0
[ "$((n + 0))" -eq "$SIZE" ] || say failed size 0 "$((n + 0)) bytes landed, $SIZE were sent"
h=$HAVE
if [ "$h" = - ]; then h=$(sum256 < "$F"); [ -n "$h" ] || say failed sha256sum 0; fi
[ "$WANT" = - ] || [ "$h" = "$WANT" ] || say badsum "$h"
chmod "$MODE" "$F" || say failed chmod 0
cd -P -- "$W" || say failed workspace 0
enter "$@"
[ -L "./$B" ] && say refused link "$#"
[ -d "./$B" ] && say isdir "$#"
T=.codefleet-put-$N
mv -f -- "$F" "./$T" || say failed mv 0
if [ -L "./$B" ]; then rm -f -- "./$T"; say refused link "$#"; fi
if [ -d "./$B" ]; then rm -f -- "./$T"; say isdir "$#"; fi
x=$(mv -f -- "./$T" "./$B" 2>&1) || { rm -f -- "./$T"; say failed mv 0 "$x"; }
meta "./$B" || { s=$SIZE m=- t=-; }
trap - EXIT
if [ "$DONE" = 1 ]; then
  (cd -P -- "$S" && rm -f -- $PARTS whole && : > "done-$s-$h") || rm -rf -- "$S"
else
  rm -rf -- "$S"
fi
say ok "$s" "$m" "$t" "$h"
`

// deleteBody removes a file, a link (not what it points to), an empty directory or, when
// REC=1, a directory and its tree.
const deleteBody = `enter "$@"
if [ -L "./$B" ]; then rm -f -- "./$B" || say failed rm "$#"; say ok; fi
[ -e "./$B" ] || say absent "$#"
if [ -d "./$B" ]; then
  if [ "$REC" = 1 ]; then x=$(rm -rf -- "./$B" 2>&1) || say failed rm "$#" "$x"
  else x=$(rmdir -- "./$B" 2>&1) || say failed rmdir "$#" "$x"; fi
else
  x=$(rm -f -- "./$B" 2>&1) || say failed rm "$#" "$x"
fi
say ok
`

// listBody lists the directory the walk entered (all of the path): one record per entry,
// "<type> <size> <mode> <mtime> <path>\0" (find's %y %s %m %T@ %P), at most MAX+1 of them, with
// GNU find (and GNU head -z to stop it), else Python; links are listed, never followed.
const listBody = `enter "$@"
printf '%s entries\n' "$N"
if find . -maxdepth 0 -printf '' && printf 'x\0' | head -z -n 1 >/dev/null; then
  find . -mindepth 1 $DEPTH -printf '%y %s %m %T@ %P\0' | head -z -n "$((MAX + 1))"
elif command -v python3 >/dev/null; then
  python3 -c "$LISTER" "$REC" "$MAX"
else
  say failed lister 0 "the sandbox has neither GNU find nor python3"
fi
say ok
`

// lister is listBody's Python: the same records, breadth first, each directory's in name order.
const lister = `import os, stat, sys
rec, mx, n, todo = sys.argv[1] == "1", int(sys.argv[2]), 0, [b""]
out = sys.stdout.buffer
while todo:
    d = todo.pop(0)
    try:
        es = sorted(os.scandir(d or b"."), key=lambda e: e.name)
    except OSError:
        continue
    for e in es:
        p = d + b"/" + e.name if d else e.name
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        m = st.st_mode
        t = b"l" if stat.S_ISLNK(m) else b"d" if stat.S_ISDIR(m) else b"f" if stat.S_ISREG(m) else b"o"
        s, ns = divmod(st.st_mtime_ns, 10**9)
        out.write(b"%s %d %o %d.%09d %s\0" % (t, st.st_size, stat.S_IMODE(m), s, ns, p))
        n += 1
        if n > mx:
            sys.exit(0)
        if rec and t == b"d":
            todo.append(p)
`

// rootScript prints the daemon's working directory, logical and physical, on two lines after
// the status line.
const rootScript = `printf '\n%s root\n%s\n%s\n' "$N" "$(pwd)" "$(pwd -P)"
`

// fsStatus is a script's status line.
type fsStatus struct {
	word   string
	fields []string
	// rest is the line after the word, as it is (an ok's fields may end with a path).
	rest string
	// msg is what follows the fields a status has (a tool's error message), if anything.
	msg string
}

// parseStatus finds the status line of a script's answer: the last line starting with the
// nonce. n is how many fields the status's word has before its free message.
func parseStatus(out, nonce string) (fsStatus, bool) {
	i := strings.LastIndex(out, "\n"+nonce+" ")
	if i < 0 {
		return fsStatus{}, false
	}
	line := strings.TrimSuffix(out[i+len(nonce)+2:], "\n")
	word, rest, _ := strings.Cut(line, " ")
	st := fsStatus{word: word, rest: rest}
	fields := map[string]int{"ok": -1, "absent": 1, "refused": 2, "isdir": 1, "notfile": 1, "notdir": 1, "toolarge": 1, "badsum": 1, "failed": 2}
	n, known := fields[word]
	switch {
	case !known:
		return fsStatus{}, false
	case n < 0:
		st.fields = strings.Fields(rest)
	default:
		st.fields = strings.SplitN(rest, " ", n+1)
		if len(st.fields) > n {
			st.msg = strings.TrimSpace(st.fields[n])
			st.fields = st.fields[:n]
		}
		if len(st.fields) < n || slices.Contains(st.fields, "") {
			return fsStatus{}, false
		}
	}
	return st, true
}

// element returns the status's element (its field i, 1-based) as the path up to it.
func (st fsStatus) element(i int, elems []string) string {
	if i >= len(st.fields) {
		return ""
	}
	n, err := strconv.Atoi(st.fields[i])
	if err != nil || n < 1 || n > len(elems) {
		return strings.Join(elems, "/")
	}
	return strings.Join(elems[:n], "/")
}

// err maps a status other than ok (and absent, which each operation reads itself) onto the
// error of the operation op ("put", "get", ...) on rel.
func (st fsStatus) err(op, rel string) error {
	elems := workspace.Elements(rel)
	what := func(i int) string {
		if e := st.element(i, elems); e != "" {
			return fmt.Sprintf("%q", e)
		}
		return "the workspace"
	}
	detail := ""
	if st.msg != "" {
		detail = ": " + trimMessage(st.msg)
	}
	switch st.word {
	case "refused":
		if st.fields[0] == "moved" {
			return fmt.Errorf("%w: daytona: %s %q: a directory of the path changed while it was checked (a symbolic link swapped in?)", envs.ErrPathRefused, op, rel)
		}
		return fmt.Errorf("%w: daytona: %s %q: %s is a symbolic link, which file requests never follow", envs.ErrPathRefused, op, rel, what(1))
	case "absent":
		return fmt.Errorf("%w: daytona: %s %q: %s does not exist", envs.ErrFileNotFound, op, rel, what(0))
	case "isdir":
		return fmt.Errorf("%w: daytona: %s %q: %s is a directory", envs.ErrFileFailed, op, rel, what(0))
	case "notfile":
		return fmt.Errorf("%w: daytona: %s %q: %s is not a regular file", envs.ErrFileFailed, op, rel, what(0))
	case "notdir":
		return fmt.Errorf("%w: daytona: %s %q: %s is not a directory", envs.ErrFileFailed, op, rel, what(0))
	case "failed":
		return fmt.Errorf("%w: daytona: %s %q: %s failed in the sandbox (at %s)%s", envs.ErrFileFailed, op, rel, st.fields[0], what(1), detail)
	}
	return fmt.Errorf("%w: daytona: %s %q: the sandbox answered %s %s", envs.ErrFileFailed, op, rel, st.word, strings.Join(st.fields, " "))
}

// trimMessage keeps the first line of a tool's message, at most 200 bytes.
func trimMessage(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// parseMeta reads the size, mode and mtime of meta ("-" when stat was missing).
func parseMeta(size, mode, mtime string) (int64, uint32, time.Time, error) {
	s, err := strconv.ParseInt(size, 10, 64)
	if err != nil {
		return 0, 0, time.Time{}, fmt.Errorf("size %q: %w", size, err)
	}
	var m uint64
	if mode != "-" {
		if m, err = strconv.ParseUint(mode, 8, 32); err != nil {
			return 0, 0, time.Time{}, fmt.Errorf("mode %q: %w", mode, err)
		}
	}
	var t time.Time
	if mtime != "-" {
		sec, frac, _ := strings.Cut(mtime, ".")
		secs, err := strconv.ParseInt(sec, 10, 64)
		if err != nil {
			return 0, 0, time.Time{}, fmt.Errorf("mtime %q: %w", mtime, err)
		}
		var ns int64
		if frac != "" {
			frac = (frac + "000000000")[:9]
			if ns, err = strconv.ParseInt(frac, 10, 64); err != nil {
				return 0, 0, time.Time{}, fmt.Errorf("mtime %q: %w", mtime, err)
			}
		}
		t = time.Unix(secs, ns).UTC()
	}
	return s, uint32(m) & 0o7777, t, nil
}

// parseRecords reads listBody's records of the directory rel: its entries, paths relative to
// the workspace.
func parseRecords(out, nonce, rel string) ([]envs.FileStat, error) {
	head := nonce + " entries\n"
	i := strings.Index(out, head)
	j := strings.LastIndex(out, "\n"+nonce+" ")
	if i < 0 || j < i+len(head) {
		return nil, fmt.Errorf("the listing has no entries header")
	}
	var entries []envs.FileStat
	for rec := range strings.SplitSeq(out[i+len(head):j], "\x00") {
		if rec == "" {
			continue
		}
		f := strings.SplitN(rec, " ", 5)
		if len(f) != 5 || f[4] == "" {
			return nil, fmt.Errorf("entry %q: want <type> <size> <mode> <mtime> <path>", trimMessage(rec))
		}
		size, mode, mtime, err := parseMeta(f[1], f[2], f[3])
		if err != nil {
			return nil, fmt.Errorf("entry %q: %w", trimMessage(f[4]), err)
		}
		e := envs.FileStat{Path: f[4], Mode: mode, ModTime: mtime}
		if rel != "" {
			e.Path = rel + "/" + f[4]
		}
		switch f[0] {
		case "f":
			e.Type, e.Size = protocol.FileTypeFile, size
		case "d":
			e.Type = protocol.FileTypeDir
		case "l":
			e.Type = protocol.FileTypeSymlink // its size would tell the length of its target
		default:
			e.Type = protocol.FileTypeOther
		}
		entries = append(entries, e)
	}
	return entries, nil
}
