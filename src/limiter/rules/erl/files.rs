//! Where envoyproxy/ratelimit's configuration files are, read as it reads
//! them: RUNTIME_ROOT, RUNTIME_SUBDIRECTORY and RUNTIME_APPDIRECTORY, dot
//! files skipped with RUNTIME_IGNOREDOTFILES, symlinks followed.

use std::path::{Path, PathBuf};

use super::{parse, Config, Texts};
use crate::config::RuntimeSettings;
use crate::limiter::rules::RulesError;

/// A file to load: its key (relative path, `/` as `.`) and where it is.
pub(super) type FileEntry = (String, PathBuf);

/// The files envoyproxy/ratelimit would read, with their keys, and a
/// warning when its settings make it read none.
pub fn files(settings: &RuntimeSettings) -> Result<(Vec<FileEntry>, Option<String>), String> {
    let mut files = Vec::new();
    if settings.watch_root {
        if settings.subdirectory.is_empty() {
            return Ok((
                files,
                Some(
                    "RUNTIME_SUBDIRECTORY is empty with RUNTIME_WATCH_ROOT=true: \
                     envoyproxy/ratelimit reads no file then, and neither do we; \
                     set RUNTIME_SUBDIRECTORY (e.g. `ratelimit`) or RUNTIME_WATCH_ROOT=false"
                        .into(),
                ),
            ));
        }
        let base = settings.root.join(&settings.subdirectory);
        walk(&base, &base, settings.ignore_dotfiles, &mut files)?;
        let prefix = format!("{}.", settings.appdirectory);
        files.retain(|(key, _)| key.starts_with(&prefix));
    } else {
        if settings.appdirectory.is_empty() {
            return Ok((
                files,
                Some(
                    "RUNTIME_APPDIRECTORY is empty with RUNTIME_WATCH_ROOT=false: \
                     envoyproxy/ratelimit reads no file then, and neither do we"
                        .into(),
                ),
            ));
        }
        let base = settings
            .root
            .join(&settings.subdirectory)
            .join(&settings.appdirectory);
        walk(&base, &base, settings.ignore_dotfiles, &mut files)?;
    }
    files.sort();
    let warning = files.is_empty().then(|| {
        format!(
            "no configuration file found under {}: every descriptor is answered OK \
             (unknown domain)",
            settings.root.display()
        )
    });
    Ok((files, warning))
}

/// Validates every file under `dir` (dot files skipped), as
/// envoyproxy/ratelimit's `config_check_cmd -config_dir DIR` does: the
/// configuration, or the first error with its file.
pub fn check_dir(dir: &Path, merge: bool) -> Result<Config, RulesError> {
    let origin = || dir.display().to_string();
    let mut files = Vec::new();
    walk(dir, dir, true, &mut files).map_err(|problem| RulesError {
        origin: origin(),
        place: String::new(),
        problem,
    })?;
    files.sort();
    parse(&read_texts(files)?, merge)
}

/// The text of each file, with its key.
fn read_texts(files: Vec<FileEntry>) -> Result<Texts, RulesError> {
    files
        .into_iter()
        .map(|(key, path)| match std::fs::read_to_string(&path) {
            Ok(text) => Ok((key, text)),
            Err(err) => Err(RulesError {
                origin: key,
                place: String::new(),
                problem: format!("error loading config file: {err}"),
            }),
        })
        .collect()
}

/// Every regular file under `dir` (a symlink to a file counts; symlinked
/// directories are not entered, except the root itself).
fn walk(
    base: &Path,
    dir: &Path,
    ignore_dotfiles: bool,
    out: &mut Vec<FileEntry>,
) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if ignore_dotfiles && name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(base, &path, ignore_dotfiles, out)?;
        } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
            let relative = path.strip_prefix(base).unwrap_or(&path);
            let key = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join(".");
            out.push((key, path));
        }
    }
    Ok(())
}

/// Reads every file the settings name: (key, text) each, and a warning
/// when they name none.
pub fn read(settings: &RuntimeSettings) -> Result<(Texts, Option<String>), RulesError> {
    let (files, warning) = files(settings).map_err(|problem| RulesError {
        origin: settings.root.display().to_string(),
        place: String::new(),
        problem,
    })?;
    Ok((read_texts(files)?, warning))
}
