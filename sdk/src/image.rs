//! Container image references, spelled one way.
//!
//! Docker lists `busybox:latest` for what a spec may call `busybox`,
//! `docker.io/busybox` or `docker.io/library/busybox:latest`. Placement compares the
//! image a session wants with the images each node holds, and credentials are chosen by
//! registry, so both sides use [`canonical`] and [`registry`], which follow the
//! Distribution project's rules for normalising a name:
//!
//! - The first path component is a registry when it has a `.` or a `:`, or is
//!   `localhost`; otherwise the registry is Docker Hub (`docker.io`).
//! - A Docker Hub name of one component is an official image, under `library/`.
//! - A name with neither tag nor digest means the tag `latest`.

/// Docker Hub's registry name, as references spell it.
pub const DOCKER_HUB: &str = "docker.io";

/// `reference` split into registry, repository path and what follows it (`:tag`,
/// `@digest`, or `:tag@digest`; empty when it names neither).
fn split(reference: &str) -> (&str, &str, &str) {
    let name = reference
        .split_once('@')
        .map_or(reference, |(name, _)| name);
    // A tag follows the last ':' after the last '/' (a registry's port comes before it).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let name_end = name[last_slash..]
        .rfind(':')
        .map_or(name.len(), |i| last_slash + i);
    let (path, suffix) = reference.split_at(name_end);
    match path.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest, suffix)
        }
        _ => (DOCKER_HUB, path, suffix),
    }
}

/// The registry `reference` is pulled from: `127.0.0.1:5000`, `registry.example.com`, or
/// `docker.io` for a name without one.
pub fn registry(reference: &str) -> &str {
    split(reference).0
}

/// `reference` spelled in full: registry, repository (`library/` for an official Docker
/// Hub image) and a tag (`latest` when it names neither tag nor digest), then the digest
/// if it names one.
///
/// ```
/// use hearth_sdk::image::canonical;
/// assert_eq!(canonical("busybox"), "docker.io/library/busybox:latest");
/// assert_eq!(canonical("127.0.0.1:5000/m@sha256:ab"), "127.0.0.1:5000/m@sha256:ab");
/// ```
pub fn canonical(reference: &str) -> String {
    let (registry, path, suffix) = split(reference);
    let library = if registry == DOCKER_HUB && !path.contains('/') {
        "library/"
    } else {
        ""
    };
    let suffix = if suffix.is_empty() { ":latest" } else { suffix };
    format!("{registry}/{library}{path}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_spelled_in_full() {
        for (reference, full) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            ("team/model:v3", "docker.io/team/model:v3"),
            ("localhost/model", "localhost/model:latest"),
            (
                "127.0.0.1:5000/hearth-test-worker:v1",
                "127.0.0.1:5000/hearth-test-worker:v1",
            ),
            ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
            (
                "registry.example.com/m@sha256:abc",
                "registry.example.com/m@sha256:abc",
            ),
            (
                "registry.example.com/m:v1@sha256:abc",
                "registry.example.com/m:v1@sha256:abc",
            ),
            (
                "hearth-test-worker:latest",
                "docker.io/library/hearth-test-worker:latest",
            ),
        ] {
            assert_eq!(canonical(reference), full, "{reference}");
            assert_eq!(canonical(full), full, "canonical is idempotent for {full}");
        }
    }

    #[test]
    fn the_registry_is_the_first_component_only_when_it_looks_like_a_host() {
        for (reference, registry_name) in [
            ("busybox", "docker.io"),
            ("team/model:v3", "docker.io"),
            ("127.0.0.1:5000/m:v1", "127.0.0.1:5000"),
            ("registry.example.com/team/m", "registry.example.com"),
            ("localhost/m", "localhost"),
            ("localhost:5000/m@sha256:ab", "localhost:5000"),
        ] {
            assert_eq!(registry(reference), registry_name, "{reference}");
        }
    }
}
