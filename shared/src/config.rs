//! Configuration helpers: every setting is an environment variable with a flag of the same
//! meaning (clap's `env`), and a bad value stops start-up with one line naming it.

use std::time::Duration;

use clap::error::ErrorKind;

/// `LOG_FORMAT`: machine-readable JSON for production, human-readable for a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Parses the command line and environment, or exits with status 2 after printing one line that
/// names the offending setting, e.g.
/// `error: invalid value 'x' for '--http-addr <HTTP_ADDR>': invalid socket address syntax`.
pub fn parse_or_exit<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|err| exit_on(err))
}

fn exit_on(err: clap::Error) -> ! {
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => err.exit(),
        _ => {
            let text = err.render().to_string();
            let line = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{line}");
            std::process::exit(2)
        }
    }
}

/// Stops start-up on a value that parsed but makes no sense with the others.
pub fn invalid(setting: &str, why: impl std::fmt::Display) -> ! {
    eprintln!("error: invalid value for {setting}: {why}");
    std::process::exit(2)
}

/// Parses `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 500ms, 10s, 2m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{raw:?} has an unknown unit (use ms, s, m or h)")),
    }
}

/// Log targets of dependencies that print whole request URLs at debug level, which would put
/// `?token=` credentials in the logs. They are held at `info` whatever `RUST_LOG` says.
const URL_LOGGING_TARGETS: &[&str] = &["web_transport_quinn::connect"];

/// Installs the global tracing subscriber. `RUST_LOG` filters, `info` by default.
pub fn init_tracing(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in URL_LOGGING_TARGETS {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }
}
