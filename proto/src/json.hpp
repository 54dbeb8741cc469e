// Internal (not installed): writing JSON by hand, for `poolmap status --json` and the broker's
// /api/v1/status. Only what those need: string literals and appending fields.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace poolmap::detail {

// A JSON string literal: quotes, backslashes and control characters escaped (the broker already
// made peer strings printable; escape anyway). Bytes >= 0x80 pass as they are.
inline void append_json_string(std::string& out, std::string_view text) {
  out += '"';
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7f) {
      char buffer[8];
      std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
      out += buffer;
    } else {
      out += ch;
    }
  }
  out += '"';
}

inline std::string json_string(std::string_view text) {
  std::string out;
  append_json_string(out, text);
  return out;
}

}  // namespace poolmap::detail
