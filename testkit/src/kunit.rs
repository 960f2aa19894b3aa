//! The KUnit kernels `cargo xtask test` builds once from Debian's `linux-source-6.1` with the
//! kernel's own `kunit.py` (see `xtask/src/kunit.rs` for what each holds).

use std::path::PathBuf;

/// The directory of the KUnit kernels: `ORCH_KUNIT_KERNELS` if set (`cargo xtask test` builds
/// the kernels once and sets it), else `kunit-6.1` in the tools cache xtask fills
/// (`$ORCH_TOOLS_CACHE`, default `~/.cache/qemu-orchestrator/tools`). Panics, naming the fix,
/// if the kernels are not there (no `READY`).
///
/// Layout: `a/`, `b/`, `c/` and `d/`, each with `bzImage`, `config` and `kunitconfig`; (a),
/// (b) and (c) also with kunit.py's own run of them (`kunit-run.json`, the raw kernel log
/// `kunit-run.log`); `a/modules/lib/modules/<release>/` as `make modules_install` makes it; the
/// kernel source in `src/` (for `src/tools/testing/kunit/kunit.py parse`); `READY`, JSON with
/// the kernel release and the build times.
pub fn kunit_kernels() -> PathBuf {
    let dir = match std::env::var_os("ORCH_KUNIT_KERNELS") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("ORCH_TOOLS_CACHE") {
            Some(tools) => PathBuf::from(tools).join("kunit-6.1"),
            None => {
                let home = std::env::var_os("HOME").expect("HOME is not set");
                PathBuf::from(home).join(".cache/qemu-orchestrator/tools/kunit-6.1")
            }
        },
    };
    assert!(
        dir.join("READY").is_file(),
        "the KUnit kernels are not built in {}: run `cargo xtask test` (it builds them once, \
         about 8 minutes on 2 idle cores), or set ORCH_KUNIT_KERNELS",
        dir.display()
    );
    dir
}
