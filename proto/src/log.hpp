// Internal (not installed): the named loggers poolmap's libraries log to.
//
// Libraries never choose sinks or levels: a logger named "poolmap.<component>" is created on first
// use with the sinks of spdlog's default logger and registered, so the program's spdlog settings
// (set_level, set_default_logger before first use) apply to it.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace poolmap::detail {

// The logger for `name` (e.g. "poolmap.broker"), created on first use. Thread-safe.
std::shared_ptr<spdlog::logger> logger(const std::string& name);

// Routes spdlog's default logger (and so every poolmap logger) to stderr with `level`
// ("trace".."off"). For programs; returns false for an unknown level name.
bool configure_program_logging(const std::string& level, const std::string& program);

// Printable form of a ZeroMQ routing identity (hex).
std::string printable_identity(const std::string& identity);

// A peer-supplied string made safe to log or show: bytes outside printable ASCII become \xNN
// (so a newline cannot forge a log line) and the result is cut to about `max_bytes` (ending in "...").
std::string printable(std::string_view text, std::size_t max_bytes = 64);

}  // namespace poolmap::detail
