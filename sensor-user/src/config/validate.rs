//! `Config::validate`: one check per section, in the order the file reads, each naming the
//! bad key and why. The first problem found is the one reported.

use super::{
    values, AppConfig, ClassRuleConfig, Config, ConfigError, ExportConfig, IntelConfig,
    ProtectedConfig, UtcOffset,
};

fn bad(key: String, why: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        why: why.into(),
    })
}

/// An absolute path or glob that parses.
fn glob_ok(key: String, g: &str) -> Result<(), ConfigError> {
    if !g.starts_with('/') {
        return bad(key, "must be an absolute path or glob");
    }
    glob::Pattern::new(g)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid {
            key,
            why: format!("not a valid glob: {e}"),
        })
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_counts_and_output()?;
        check_apps(&self.apps)?;
        self.check_disabled_hooks()?;
        for (i, app) in self.apps.iter().enumerate() {
            for (j, g) in app.data.iter().enumerate() {
                glob_ok(format!("app[{i}].data[{j}]"), g)?;
            }
        }
        check_classes(&self.classes)?;
        for (i, r) in self.agent.dns_resolvers.iter().enumerate() {
            if r.parse::<std::net::IpAddr>().is_err() {
                return bad(format!("agent.dns_resolvers[{i}]"), "must be an IP address");
            }
        }
        check_export(&self.export)?;
        if !self.agent.state_dir.is_absolute() {
            return bad("agent.state_dir".into(), "must be an absolute path");
        }
        check_intel(&self.intel)?;
        check_protected(&self.protected)
    }

    fn check_counts_and_output(&self) -> Result<(), ConfigError> {
        if self.apps.is_empty() {
            return bad("app".into(), "at least one `[[app]]` to watch is required");
        }
        if self.apps.len() > clinicwatch_common::capacity::WATCHED_EXES as usize {
            return bad("app".into(), "too many applications");
        }
        if self.agent.output.is_empty() {
            return bad("agent.output".into(), "must be `-` or a file path");
        }
        if self.agent.output_max_mb > 1 << 20 {
            return bad("agent.output_max_mb".into(), "at most 1048576 (1 TiB)");
        }
        if self.agent.output_keep > 1000 {
            return bad("agent.output_keep".into(), "at most 1000 rotated files");
        }
        Ok(())
    }

    fn check_disabled_hooks(&self) -> Result<(), ConfigError> {
        for (i, hook) in self.agent.disabled_hooks.iter().enumerate() {
            let known: Vec<&str> = crate::kernel::capabilities::CAPABILITIES
                .iter()
                .flat_map(|c| c.options.iter().map(|o| o.name))
                .collect();
            if !known.contains(&hook.as_str()) {
                return Err(ConfigError::Invalid {
                    key: format!("agent.disabled_hooks[{i}]"),
                    why: format!("unknown hook `{hook}`; known: {}", known.join(", ")),
                });
            }
        }
        Ok(())
    }
}

fn check_apps(apps: &[AppConfig]) -> Result<(), ConfigError> {
    for (i, app) in apps.iter().enumerate() {
        if app.name.trim().is_empty() {
            return bad(format!("app[{i}].name"), "must not be empty");
        }
        if apps[..i].iter().any(|a| a.name == app.name) {
            return bad(format!("app[{i}].name"), "duplicate application name");
        }
        if !app.exe.is_absolute() {
            return bad(format!("app[{i}].exe"), "must be an absolute path");
        }
        if let Some(re) = &app.cmdline {
            if let Err(e) = regex::Regex::new(re) {
                return Err(ConfigError::Invalid {
                    key: format!("app[{i}].cmdline"),
                    why: format!("not a valid regex: {e}"),
                });
            }
        }
    }
    Ok(())
}

fn check_classes(classes: &[ClassRuleConfig]) -> Result<(), ConfigError> {
    use crate::event::class::FileClass;
    for (i, c) in classes.iter().enumerate() {
        if FileClass::parse(&c.class).is_none() {
            let known: Vec<&str> = FileClass::ALL.iter().map(|c| c.as_str()).collect();
            return bad(
                format!("class[{i}].class"),
                &format!("unknown class `{}`; known: {}", c.class, known.join(", ")),
            );
        }
        glob_ok(format!("class[{i}].path"), &c.path)?;
    }
    Ok(())
}

/// Checked only when `export.collector` is set: without it nothing is exported.
fn check_export(ex: &ExportConfig) -> Result<(), ConfigError> {
    if ex.collector.is_empty() {
        return Ok(());
    }
    if !ex.collector.starts_with("https://") {
        return bad("export.collector".into(), "must be an https:// URL");
    }
    for (key, v) in [("export.clinic", &ex.clinic), ("export.host", &ex.host)] {
        if v.trim().is_empty() {
            return bad(key.into(), "is required when `export.collector` is set");
        }
    }
    for (key, p) in [
        ("export.ca_file", &ex.ca_file),
        ("export.cert_file", &ex.cert_file),
        ("export.key_file", &ex.key_file),
    ] {
        if !p.is_absolute() {
            return bad(key.into(), "must be an absolute path");
        }
    }
    if ex.batch_records == 0 || ex.batch_records > 10_000 {
        return bad("export.batch_records".into(), "must be between 1 and 10000");
    }
    if ex.heartbeat_secs == 0 || ex.heartbeat_secs > 3600 {
        return bad("export.heartbeat_secs".into(), "must be between 1 and 3600");
    }
    if !matches!(ex.compression.as_str(), "zstd" | "none") {
        return bad("export.compression".into(), "must be `zstd` or `none`");
    }
    if ex.spool_max_mb == 0 {
        return bad("export.spool_max_mb".into(), "must be at least 1");
    }
    Ok(())
}

fn check_intel(intel: &IntelConfig) -> Result<(), ConfigError> {
    if intel.window_secs == 0 || intel.window_secs > 86_400 {
        return bad("intel.window_secs".into(), "must be between 1 and 86400");
    }
    if !(intel.learning_days.is_finite() && intel.learning_days >= 0.0) {
        return bad(
            "intel.learning_days".into(),
            "must be a number of days >= 0",
        );
    }
    if intel.slow_learning_every == 0 {
        return bad("intel.slow_learning_every".into(), "must be at least 1");
    }
    for (i, v) in intel.vendor_allow.iter().enumerate() {
        if let Err(why) = values::Allow::parse(v) {
            return bad(format!("intel.vendor_allow[{i}]"), &why);
        }
    }
    for (i, h) in intel.practice_hours.iter().enumerate() {
        if let Err(why) = values::Span::parse(h) {
            return bad(format!("intel.practice_hours[{i}]"), &why);
        }
    }
    if let UtcOffset::Minutes(m) = intel.utc_offset_minutes {
        if m.abs() > 14 * 60 {
            return bad("intel.utc_offset_minutes".into(), "must be within ±840");
        }
    }
    Ok(())
}

fn check_protected(protected: &[ProtectedConfig]) -> Result<(), ConfigError> {
    for (i, p) in protected.iter().enumerate() {
        if p.name.trim().is_empty() {
            return bad(format!("protected[{i}].name"), "must not be empty");
        }
        if !p.path.starts_with('/') {
            return bad(
                format!("protected[{i}].path"),
                "must be an absolute path or glob",
            );
        }
        if let Err(e) = glob::Pattern::new(&p.path) {
            return Err(ConfigError::Invalid {
                key: format!("protected[{i}].path"),
                why: format!("not a valid glob: {e}"),
            });
        }
    }
    Ok(())
}
