use std::io::Write;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            // Access lines are JSON documents, one per line, for log shippers to parse as is.
            if record.target() == hf_edge::access_log::TARGET {
                return writeln!(buf, "{}", record.args());
            }
            writeln!(
                buf,
                "[{} {} {}] {}",
                buf.timestamp(),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
    hf_edge::cli::run()
}
