//! Target-repo URLs relative to the control repo, resolved as git resolves
//! relative submodule URLs: `../app.git` next to `https://h/acme/control.git`
//! is `https://h/acme/app.git`.

/// Resolves `url` against the control repo's URL or path. Absolute URLs and
/// paths come back unchanged.
pub fn resolve(control: &str, url: &str) -> String {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return url.to_owned();
    }
    let control = control.trim_end_matches('/');
    // Split off a `scheme://host` prefix (or scp-like `host:`) that `..` must not climb over.
    let (prefix, path) = if let Some(i) = control.find("://") {
        let after = &control[i + 3..];
        let host_end = after.find('/').map_or(control.len(), |j| i + 3 + j);
        control.split_at(host_end)
    } else if let Some((host, path)) = control.split_once(':').filter(|(h, _)| !h.contains('/') && !h.is_empty()) {
        (&control[..host.len() + 1], path)
    } else {
        ("", control)
    };
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    for seg in url.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if prefix.is_empty() {
        if absolute { format!("/{joined}") } else { joined }
    } else if prefix.ends_with(':') {
        format!("{prefix}{joined}")
    } else {
        format!("{prefix}/{joined}")
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn resolves_like_submodules() {
        assert_eq!(resolve("https://h/acme/control.git", "../app.git"), "https://h/acme/app.git");
        assert_eq!(resolve("https://h/acme/control.git/", "../../other/app.git"), "https://h/other/app.git");
        assert_eq!(resolve("/srv/git/control.git", "../app.git"), "/srv/git/app.git");
        assert_eq!(resolve("/srv/git/control.git", "./sub.git"), "/srv/git/control.git/sub.git");
        assert_eq!(resolve("git@h:acme/control.git", "../app.git"), "git@h:acme/app.git");
        assert_eq!(resolve("https://h/control.git", "../../../x.git"), "https://h/x.git", "never climbs over the host");
        assert_eq!(resolve("/srv/control.git", "https://h/x.git"), "https://h/x.git");
    }
}
