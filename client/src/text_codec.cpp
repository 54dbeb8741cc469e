#include "text_codec.hpp"

#include <charconv>
#include <cstdint>
#include <stdexcept>

namespace poolmap::cli {
namespace {

struct Named {
  std::string_view name;
  TextType type;
};
constexpr Named kTypes[] = {{"i8", TextType::kI8},   {"i16", TextType::kI16}, {"i32", TextType::kI32},
                            {"i64", TextType::kI64}, {"u8", TextType::kU8},   {"u16", TextType::kU16},
                            {"u32", TextType::kU32}, {"u64", TextType::kU64}, {"f32", TextType::kF32},
                            {"f64", TextType::kF64}, {"bool", TextType::kBool}, {"string", TextType::kString}};

std::optional<TextType> text_type(std::string_view name) {
  for (const auto& named : kTypes) {
    if (named.name == name) return named.type;
  }
  return std::nullopt;
}

std::string_view type_name(TextType type) {
  for (const auto& named : kTypes) {
    if (named.type == type) return named.name;
  }
  return "?";
}

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

template <class T>
void encode_number(std::string_view field, TextType type, OutputArchive& archive) {
  const std::string_view text = trim(field);
  T value{};
  const char* begin = text.data();
  if (!text.empty() && text.front() == '+') ++begin;  // from_chars takes no plus sign
  const auto [end, error] = std::from_chars(begin, text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) {
    const std::string_view name = type_name(type);
    throw std::invalid_argument("'" + std::string(field) + "' is not " +
                                (error == std::errc::result_out_of_range ? "in the range of " : "") +
                                (name.front() == 'u' ? "a " : "an ") + std::string(name));
  }
  archive(value);
}

void encode_field(TextType type, std::string_view field, OutputArchive& archive) {
  switch (type) {
    case TextType::kI8: return encode_number<std::int8_t>(field, type, archive);
    case TextType::kI16: return encode_number<std::int16_t>(field, type, archive);
    case TextType::kI32: return encode_number<std::int32_t>(field, type, archive);
    case TextType::kI64: return encode_number<std::int64_t>(field, type, archive);
    case TextType::kU8: return encode_number<std::uint8_t>(field, type, archive);
    case TextType::kU16: return encode_number<std::uint16_t>(field, type, archive);
    case TextType::kU32: return encode_number<std::uint32_t>(field, type, archive);
    case TextType::kU64: return encode_number<std::uint64_t>(field, type, archive);
    case TextType::kF32: return encode_number<float>(field, type, archive);
    case TextType::kF64: return encode_number<double>(field, type, archive);
    case TextType::kBool: {
      const std::string_view text = trim(field);
      if (text == "true" || text == "1" || text == "false" || text == "0") {
        archive(text == "true" || text == "1");
        return;
      }
      throw std::invalid_argument("'" + std::string(field) + "' is not a bool (true, false, 1 or 0)");
    }
    case TextType::kString:
      archive(std::string(field));
      return;
  }
}

template <class T>
void append_number(InputArchive& archive, std::string& out) {
  T value{};
  archive(value);
  char buffer[64];
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, end);
}

}  // namespace

TextSignature parse_text_signature(std::string_view task, std::string_view signature) {
  const auto open = signature.find('(');
  if (open == std::string_view::npos || signature.back() != ')') {
    throw std::invalid_argument("task '" + std::string(task) + "' has a signature poolmap cannot read: " +
                                std::string(signature));
  }
  std::vector<std::string_view> names{signature.substr(0, open)};
  const std::string_view inside = signature.substr(open + 1, signature.size() - open - 2);
  // Parameterised types (vector<f64>, tuple<i64,string>) have commas inside their brackets; they
  // have no text form anyway, so a plain split is enough to name the first one that does not fit.
  for (std::size_t start = 0;;) {
    const auto comma = inside.find(',', start);
    names.push_back(inside.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  TextSignature parsed;
  for (std::size_t i = 0; i < names.size(); ++i) {
    const auto type = text_type(names[i]);
    if (!type) {
      throw std::invalid_argument("task '" + std::string(task) + "' is " + std::string(signature) +
                                  ": poolmap map reads arguments and prints results that are numbers (i8 to i64, "
                                  "u8 to u64, f32, f64), bool or string; call this task from a program instead");
    }
    if (i == 0) {
      parsed.result = *type;
    } else {
      parsed.arguments.push_back(*type);
    }
  }
  return parsed;
}

void encode_line(const TextSignature& signature, std::string_view line, OutputArchive& archive) {
  if (signature.arguments.size() == 1) return encode_field(signature.arguments.front(), line, archive);
  std::size_t start = 0;
  for (std::size_t i = 0; i < signature.arguments.size(); ++i) {
    const auto tab = line.find('\t', start);
    const bool last = i + 1 == signature.arguments.size();
    if (tab == std::string_view::npos && !last) {
      throw std::invalid_argument("has " + std::to_string(i + 1) + " tab-separated fields; the task takes " +
                                  std::to_string(signature.arguments.size()));
    }
    if (tab != std::string_view::npos && last) {
      throw std::invalid_argument("has more than " + std::to_string(signature.arguments.size()) +
                                  " tab-separated fields");
    }
    const std::string_view field = line.substr(start, last ? std::string_view::npos : tab - start);
    try {
      encode_field(signature.arguments[i], field, archive);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("field " + std::to_string(i + 1) + ": " + e.what());
    }
    start = tab + 1;
  }
}

void decode_result(TextType type, InputArchive& archive, std::string& out) {
  switch (type) {
    case TextType::kI8: {  // a number, not a character
      std::int8_t value = 0;
      archive(value);
      out += std::to_string(value);
      return;
    }
    case TextType::kU8: {
      std::uint8_t value = 0;
      archive(value);
      out += std::to_string(value);
      return;
    }
    case TextType::kI16: return append_number<std::int16_t>(archive, out);
    case TextType::kI32: return append_number<std::int32_t>(archive, out);
    case TextType::kI64: return append_number<std::int64_t>(archive, out);
    case TextType::kU16: return append_number<std::uint16_t>(archive, out);
    case TextType::kU32: return append_number<std::uint32_t>(archive, out);
    case TextType::kU64: return append_number<std::uint64_t>(archive, out);
    case TextType::kF32: return append_number<float>(archive, out);
    case TextType::kF64: return append_number<double>(archive, out);
    case TextType::kBool: {
      bool value = false;
      archive(value);
      out += value ? "true" : "false";
      return;
    }
    case TextType::kString: {
      std::string value;
      archive(value);
      out += value;
      return;
    }
  }
}

}  // namespace poolmap::cli
