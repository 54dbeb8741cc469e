// Text forms of task arguments and results, for `poolmap map` (one input per line, one result per
// line). Pure logic: no sockets.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "poolmap/archive.hpp"

namespace poolmap::cli {

// The scalar types a signature names that have a text form.
enum class TextType { kI8, kI16, kI32, kI64, kU8, kU16, kU32, kU64, kF32, kF64, kBool, kString };

// A task signature ("i64(i64)", "string(string,i32)") whose result and arguments all have a text
// form: `result` and one entry per argument.
struct TextSignature {
  TextType result = TextType::kI64;
  std::vector<TextType> arguments;
};

// Parses `signature`. Throws std::invalid_argument naming task `task` and the types that have no
// text form (vectors, tuples, structs ...).
TextSignature parse_text_signature(std::string_view task, std::string_view signature);

// Encodes one input line: one field per argument, separated by tabs (a single string argument takes
// the whole line, tabs included). Numbers may have surrounding spaces; bool is true/false/1/0.
// Throws std::invalid_argument saying which field is not what (without the line number).
void encode_line(const TextSignature& signature, std::string_view line, OutputArchive& archive);

// Decodes one result and appends its text form to `out`: integers in decimal, floats in the
// shortest form that reads back the same, bool as true/false, strings as they are.
// Throws cereal::Exception when the bytes do not decode.
void decode_result(TextType type, InputArchive& archive, std::string& out);

}  // namespace poolmap::cli
