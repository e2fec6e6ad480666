//! The documentation holds together: every relative link and every anchor in every Markdown
//! file of the repository resolves (a file that exists, a heading that exists), and so does
//! every link into this repository's GitHub tree from any file (the alert rules' runbook
//! URLs). External sites are not fetched: tests generate no traffic beyond 127.0.0.1.

use omni_e2e::workspace;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where links into this repository on GitHub start; the rest is a path in the tree.
const REPOSITORY_TREE: &str = "https://github.com/omnirouter/omnirouter/blob/main/";

/// Directories that are not documentation: build output, tool caches, local state.
const SKIPPED_DIRS: &[&str] = &[
    "target",
    ".venv",
    ".git",
    ".run",
    "corpus",
    "artifacts",
    "node_modules",
];

fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) {
                files_under(&path, keep, out);
            }
        } else if keep(&path) {
            out.push(path);
        }
    }
}

/// A path as the repository names it.
fn shown(path: &Path) -> String {
    let root = workspace().canonicalize().unwrap();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    path.strip_prefix(&root)
        .unwrap_or(&path)
        .display()
        .to_string()
}

fn markdown_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    files_under(
        &workspace(),
        &|p| p.extension().is_some_and(|e| e == "md"),
        &mut out,
    );
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (letters of any script,
/// digits, `-` and `_` kept), spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// Every anchor a Markdown file offers: its headings' slugs (a repeated heading gets `-1`,
/// `-2`, … as on GitHub) and explicit `<a id>`/`<a name>` targets.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in prose(text) {
        let trimmed = line.trim_start_matches('#');
        if trimmed.len() < line.len() && line.len() - trimmed.len() <= 6 && trimmed.starts_with(' ')
        {
            let base = slug(&trimmed.replace('`', ""));
            let mut anchor = base.clone();
            let mut n = 0;
            while out.contains(&anchor) {
                n += 1;
                anchor = format!("{base}-{n}");
            }
            out.insert(anchor);
        }
        for attr in ["id=\"", "name=\""] {
            for (i, _) in line.match_indices(attr) {
                let rest = &line[i + attr.len()..];
                if let Some(end) = rest.find('"') {
                    out.insert(rest[..end].to_owned());
                }
            }
        }
    }
    out
}

/// The targets of inline links `[text](target)` and reference definitions `[x]: target`,
/// outside code blocks and inline code.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        // Inline code spans are examples, not links.
        let line: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(rest) = line.trim_start().strip_prefix('[') {
            let definition = rest
                .split_once("]: ")
                .filter(|(label, _)| !label.contains(']'));
            if let Some((_, target)) = definition {
                out.push(target.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
        for (i, _) in line.match_indices("](") {
            let rest = &line[i + 2..];
            if let Some(end) = rest.find(')') {
                let target = rest[..end].split_whitespace().next().unwrap_or("");
                out.push(target.to_owned());
            }
        }
    }
    out
}

/// Why `target`, linked from `from`, does not resolve; `None` when it does.
fn broken(from: &Path, target: &str) -> Option<String> {
    let (path, fragment) = match target.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else if let Some(in_repo) = path.strip_prefix(REPOSITORY_TREE) {
        workspace().join(in_repo)
    } else if path.contains("://") || path.starts_with("mailto:") {
        return None;
    } else if let Some(absolute) = path.strip_prefix('/') {
        workspace().join(absolute)
    } else {
        from.parent().unwrap().join(path)
    };
    if !file.exists() {
        return Some(format!("{} does not exist", shown(&file)));
    }
    let fragment = fragment.filter(|f| !f.is_empty())?;
    if file.extension().is_none_or(|e| e != "md") {
        // A line anchor (`#L10`) into source, which GitHub resolves.
        return (!fragment.starts_with('L'))
            .then(|| format!("#{fragment} into a non-Markdown file"));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    (!anchors(&text).contains(fragment))
        .then(|| format!("no heading #{fragment} in {}", shown(&file)))
}

#[test]
fn every_link_in_the_documentation_resolves() {
    let files = markdown_files();
    assert!(files.len() >= 10, "{files:?}");
    let mut checked = 0;
    let mut bad = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in link_targets(&text) {
            checked += 1;
            if let Some(why) = broken(file, &target) {
                bad.push(format!("{}: ({target}): {why}", shown(file)));
            }
        }
    }
    assert!(
        checked >= 50,
        "only {checked} links found: is the scan broken?"
    );
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn links_into_the_repository_tree_from_any_file_resolve() {
    let mut files = Vec::new();
    files_under(
        &workspace(),
        &|p| {
            p.extension().is_some_and(|e| {
                ["yml", "yaml", "toml", "json", "rs", "md", "js"]
                    .contains(&e.to_str().unwrap_or(""))
            })
        },
        &mut files,
    );
    let mut checked = 0;
    let mut bad = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (i, _) in text.match_indices(REPOSITORY_TREE) {
            let url: String = text[i..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | ')' | '`' | '>'))
                .collect();
            // `<alertname lowercased>`-style placeholders describe a pattern, not a link.
            if url.contains('<') || url.contains('{') {
                continue;
            }
            checked += 1;
            if let Some(why) = broken(file, &url) {
                bad.push(format!("{}: {url}: {why}", shown(file)));
            }
        }
    }
    assert!(checked >= 12, "only {checked} repository links found");
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn slugs_and_anchors_follow_github() {
    assert_eq!(
        slug("OAuth 2.0 (XOAUTH2): Gmail, Google Workspace, Microsoft 365"),
        "oauth-20-xoauth2-gmail-google-workspace-microsoft-365"
    );
    assert_eq!(
        slug("Agents' typing and \"seen\" on Messenger"),
        "agents-typing-and-seen-on-messenger"
    );
    assert_eq!(slug("Tiếng Việt: chào"), "tiếng-việt-chào");
    let a =
        anchors("# A\n## A\n```\n# not a heading\n```\n### `POST /v1/x`\n<a id=\"here\"></a>\n");
    assert_eq!(
        a.into_iter().collect::<Vec<_>>(),
        ["a", "a-1", "here", "post-v1x"]
    );
    assert_eq!(
        link_targets("[a](x.md#y) `[b](not)` [c]: z.md\n```\n[d](no)\n```\n"),
        ["x.md#y"]
    );
}
