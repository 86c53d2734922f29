//! `Overrides::from_env`: policy overrides read from the environment, in a test binary of
//! its own (it sets process-wide variables, so nothing else may run beside it).

use std::time::Duration;

use switchboard::{Error, Overrides, POLICY_ENV, POLICY_FILE_ENV, PatternOptions};

fn set(name: &str, value: Option<&std::ffi::OsStr>) {
    // SAFETY: the only test of this binary; no other thread reads the environment.
    unsafe {
        match value {
            Some(v) => std::env::set_var(name, v),
            None => std::env::remove_var(name),
        }
    }
}

#[test]
fn overrides_come_from_the_environment() {
    set(POLICY_ENV, None);
    set(POLICY_FILE_ENV, None);
    assert!(Overrides::from_env().unwrap().is_empty(), "neither set: none");

    set(POLICY_ENV, Some(r#"{"charge": {"timeout": "3s"}}"#.as_ref()));
    let o = Overrides::from_env().unwrap();
    assert_eq!(
        o.apply("charge", PatternOptions::new()).get_timeout(),
        Some(Duration::from_secs(3))
    );

    let dir = std::env::temp_dir().join(format!("sb-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.json");
    std::fs::write(&file, r#"{"*": {"concurrency": 8}}"#).unwrap();
    set(POLICY_FILE_ENV, Some(file.as_os_str()));
    let err = Overrides::from_env().unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");

    set(POLICY_ENV, None);
    let o = Overrides::from_env().unwrap();
    assert_eq!(o.apply("any", PatternOptions::new()).get_concurrency(), Some(8));

    std::fs::write(&file, vec![b' '; (1 << 20) + 1]).unwrap();
    let err = Overrides::from_env().unwrap_err();
    assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    std::fs::write(&file, r#"{"a": {"timeout": "soon"}}"#).unwrap();
    let err = Overrides::from_env().unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains("\"soon\"")),
        "{err}"
    );
    set(POLICY_FILE_ENV, Some(dir.join("missing.json").as_os_str()));
    let err = Overrides::from_env().unwrap_err();
    assert!(err.to_string().contains("missing.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
