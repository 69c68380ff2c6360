//! Envoy's `access_log` (file, stdout and stderr loggers) on the HTTP
//! connection manager and the TCP proxy: each logger's format is compiled at
//! config time; a finished request renders one line per logger and hands it
//! to a [`sink::Sink`] without waiting.

mod complete;
mod sink;

use std::sync::Arc;

use xds_protos::envoy::config::accesslog::v3::{access_log::ConfigType, AccessLog};
use xds_protos::envoy::config::core::v3::{
    data_source::Specifier, substitution_format_string, SubstitutionFormatString,
};
use xds_protos::envoy::extensions::access_loggers::file::v3::{file_access_log, FileAccessLog};
use xds_protos::envoy::extensions::access_loggers::stream::v3::{
    stderr_access_log, stdout_access_log, StderrAccessLog, StdoutAccessLog,
};

use crate::config::ConfigError;
use crate::format::{Context, Format, DEFAULT_FORMAT};

pub use complete::{count_request, finish_response, Finish, Record, RequestTally, SavedRequest};
pub use sink::{reopen_all, visit_stats};
use sink::{Sink, Target};

const FILE: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// The loggers of one connection manager or TCP proxy.
#[derive(Debug, Default)]
pub struct AccessLogs(Vec<Logger>);

#[derive(Debug)]
struct Logger {
    line: Line,
    sink: Arc<Sink>,
}

#[derive(Debug)]
enum Line {
    Text { format: Format, omit_empty: bool },
    Json { template: Json, omit_empty: bool },
}

/// A `json_format` struct: strings are format strings, other values fixed.
#[derive(Debug)]
enum Json {
    Object(Vec<(String, Json)>),
    Format(Format),
    Fixed(serde_json::Value),
}

impl AccessLogs {
    /// `field` is the list's path (`access_log`), for error messages.
    pub fn compile(list: &[AccessLog], field: &str) -> Result<AccessLogs, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, l)| Logger::compile(l).map_err(|e| e.at(format!("{field}[{i}]"))))
            .collect::<Result<_, _>>()
            .map(AccessLogs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Renders and queues one line per logger.
    pub fn log(&self, ctx: &Context<'_>) {
        thread_local! {
            /// Lines are rendered here, then copied into their sink's buffer.
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        LINE.with_borrow_mut(|line| {
            for l in &self.0 {
                line.clear();
                l.line.render(ctx, line);
                l.sink.send(line);
            }
        });
    }
}

impl Logger {
    /// The legacy `format`/`json_format` fields are deprecated but Envoy
    /// still takes them, and App Mesh generated configs use them.
    #[allow(deprecated)]
    fn compile(l: &AccessLog) -> Result<Logger, ConfigError> {
        if l.filter.is_some() {
            return Err(ConfigError::new(
                "filter",
                "access log filters are not supported by trellis",
            ));
        }
        let Some(ConfigType::TypedConfig(any)) = &l.config_type else {
            return Err(ConfigError::new("typed_config", "typed_config is required"));
        };
        let unpack_err = |e| ConfigError::new("typed_config", e);
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        let (target, line) = match name {
            FILE => {
                let f: FileAccessLog = xds_protos::any::unpack(any).map_err(unpack_err)?;
                if f.path.is_empty() {
                    return Err(ConfigError::new("typed_config.path", "a path is required"));
                }
                let line = match &f.access_log_format {
                    None => default_line()?,
                    Some(file_access_log::AccessLogFormat::Format(s)) => Line::Text {
                        format: text(s).map_err(|e| e.at("typed_config.format"))?,
                        omit_empty: false,
                    },
                    Some(file_access_log::AccessLogFormat::JsonFormat(s))
                    | Some(file_access_log::AccessLogFormat::TypedJsonFormat(s)) => Line::Json {
                        template: json_struct(s).map_err(|e| e.at("typed_config.json_format"))?,
                        omit_empty: false,
                    },
                    Some(file_access_log::AccessLogFormat::LogFormat(f)) => {
                        substitution(f).map_err(|e| e.at("typed_config.log_format"))?
                    }
                };
                let target = match f.path.as_str() {
                    "/dev/stdout" => Target::Stdout,
                    "/dev/stderr" => Target::Stderr,
                    p => Target::File(p.into()),
                };
                (target, line)
            }
            STDOUT => {
                let f: StdoutAccessLog = xds_protos::any::unpack(any).map_err(unpack_err)?;
                let line = match &f.access_log_format {
                    None => default_line()?,
                    Some(stdout_access_log::AccessLogFormat::LogFormat(f)) => {
                        substitution(f).map_err(|e| e.at("typed_config.log_format"))?
                    }
                };
                (Target::Stdout, line)
            }
            STDERR => {
                let f: StderrAccessLog = xds_protos::any::unpack(any).map_err(unpack_err)?;
                let line = match &f.access_log_format {
                    None => default_line()?,
                    Some(stderr_access_log::AccessLogFormat::LogFormat(f)) => {
                        substitution(f).map_err(|e| e.at("typed_config.log_format"))?
                    }
                };
                (Target::Stderr, line)
            }
            other => {
                return Err(ConfigError::new(
                    "typed_config",
                    format!("access logger {other} is not supported by trellis"),
                ))
            }
        };
        let sink = Sink::get(target.clone()).map_err(|e| {
            ConfigError::new("typed_config.path", format!("cannot open {target:?}: {e}"))
        })?;
        Ok(Logger { line, sink })
    }
}

fn default_line() -> Result<Line, ConfigError> {
    Ok(Line::Text {
        format: Format::parse(DEFAULT_FORMAT)?,
        omit_empty: false,
    })
}

/// Envoy's legacy `format` string: an empty one means the default.
fn text(s: &str) -> Result<Format, ConfigError> {
    Format::parse(if s.is_empty() { DEFAULT_FORMAT } else { s })
}

#[allow(deprecated)] // `text_format` is deprecated but still valid config.
fn substitution(f: &SubstitutionFormatString) -> Result<Line, ConfigError> {
    if !f.formatters.is_empty() {
        return Err(ConfigError::new(
            "formatters",
            "formatter extensions are not supported by trellis",
        ));
    }
    let omit_empty = f.omit_empty_values;
    Ok(match &f.format {
        None => {
            return Err(ConfigError::new(
                "",
                "one of text_format, text_format_source or json_format is required",
            ))
        }
        Some(substitution_format_string::Format::TextFormat(s)) => Line::Text {
            format: Format::parse(s).map_err(|e| e.at("text_format"))?,
            omit_empty,
        },
        Some(substitution_format_string::Format::TextFormatSource(d)) => {
            let s = match &d.specifier {
                Some(Specifier::InlineString(s)) => s.clone(),
                Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).map_err(|_| {
                    ConfigError::new("text_format_source.inline_bytes", "not UTF-8")
                })?,
                Some(Specifier::Filename(p)) => std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::new("text_format_source.filename", format!("{p}: {e}"))
                })?,
                _ => {
                    return Err(ConfigError::new(
                        "text_format_source",
                        "inline_string, inline_bytes or filename is required",
                    ))
                }
            };
            Line::Text {
                format: Format::parse(&s).map_err(|e| e.at("text_format_source"))?,
                omit_empty,
            }
        }
        Some(substitution_format_string::Format::JsonFormat(s)) => Line::Json {
            template: json_struct(s).map_err(|e| e.at("json_format"))?,
            omit_empty,
        },
    })
}

fn json_struct(s: &prost_types::Struct) -> Result<Json, ConfigError> {
    s.fields
        .iter()
        .map(|(k, v)| Ok((k.clone(), json_value(v).map_err(|e| e.at(k))?)))
        .collect::<Result<_, _>>()
        .map(Json::Object)
}

fn json_value(v: &prost_types::Value) -> Result<Json, ConfigError> {
    use prost_types::value::Kind;
    Ok(match &v.kind {
        Some(Kind::StringValue(s)) => Json::Format(Format::parse(s)?),
        Some(Kind::StructValue(s)) => json_struct(s)?,
        Some(Kind::NumberValue(n)) => Json::Fixed(serde_json::json!(n)),
        Some(Kind::BoolValue(b)) => Json::Fixed(serde_json::Value::Bool(*b)),
        Some(Kind::NullValue(_)) | None => Json::Fixed(serde_json::Value::Null),
        Some(Kind::ListValue(_)) => {
            return Err(ConfigError::new(
                "",
                "lists are not supported in json_format",
            ))
        }
    })
}

impl Line {
    fn render(&self, ctx: &Context<'_>, out: &mut String) {
        match self {
            Line::Text { format, omit_empty } => format.render(ctx, *omit_empty, out),
            Line::Json {
                template,
                omit_empty,
            } => {
                use std::fmt::Write;
                let _ = write!(out, "{}", template.render(ctx, *omit_empty));
                out.push('\n');
            }
        }
    }
}

impl Json {
    fn render(&self, ctx: &Context<'_>, omit_empty: bool) -> serde_json::Value {
        match self {
            Json::Object(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.render(ctx, omit_empty)))
                    .filter(|(_, v)| !(omit_empty && v.is_null()))
                    .collect(),
            ),
            Json::Format(f) => f.json(ctx, omit_empty),
            Json::Fixed(v) => v.clone(),
        }
    }
}

/// Log rotation: after SIGUSR1 every file logger reopens its path, as
/// Envoy does on `POST /reopen_logs` and many deployments do by signal.
pub fn reopen_on_sigusr1() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::user_defined1()) {
        Ok(mut usr1) => {
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    tracing::info!("SIGUSR1: reopening access log files");
                    reopen_all();
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGUSR1; access logs will not reopen")
        }
    }
}

#[cfg(test)]
mod tests;
