#include "omnisift/prompt.h"

#include <filesystem>

#include "json_util.h"
#include "omnisift/layout.h"

namespace omnisift {

const char* const kDefaultSystemPrompt =
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech.";

namespace {
const char* const kTemplateDefaultSystem = "You are a helpful assistant.";
// What the rendering below relies on; a template without one of them renders differently.
const char* const kTemplateFragments[] = {
    "<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n",
    "<|im_start|>{{ message['role'] }}\\n",
    "{{ content['text'] }}",
    "<|vision_bos|><|VIDEO|><|vision_eos|>",
    "<|im_end|>\\n",
    "<|im_start|>assistant\\n",
};

// Unescaped JSON strings hold real newlines; the fragments are written with "\\n" for readability.
std::string with_newlines(const char* fragment) {
  std::string s(fragment);
  for (size_t i; (i = s.find("\\n")) != std::string::npos;) s.replace(i, 2, "\n");
  return s;
}
}  // namespace

std::string ChatPrompt::prefix_text(const std::optional<std::string>& system) {
  return "<|im_start|>system\n" + (system ? *system : std::string(kTemplateDefaultSystem)) +
         "<|im_end|>\n<|im_start|>user\n";
}
std::string ChatPrompt::suffix_text(const std::string& question) {
  return question + "<|im_end|>\n<|im_start|>assistant\n";
}
std::string ChatPrompt::followup_text(const std::string& question) {
  return turn_prefix_text() + question + "<|im_end|>\n<|im_start|>assistant\n";
}
std::string ChatPrompt::turn_prefix_text() { return "<|im_end|>\n<|im_start|>user\n"; }

Result<ChatPrompt> ChatPrompt::create(const Tokenizer& tokenizer, const LayoutSpec& spec,
                                      const std::string& tokenizer_folder) {
  namespace fs = std::filesystem;
  std::string chat_template;
  for (const char* file : {"chat_template.json", "tokenizer_config.json"}) {
    const fs::path path = fs::path(tokenizer_folder) / file;
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) continue;
    OMNISIFT_ASSIGN_OR_RETURN(std::string text, read_file(path.string()));
    detail::json j = detail::json::parse(text, nullptr, false);
    if (j.is_discarded()) return DataLoss(path.string() + " is not valid JSON; export again");
    auto it = j.is_object() ? j.find("chat_template") : j.end();
    if (it != j.end() && it->is_string()) {
      chat_template = it->get<std::string>();
      break;
    }
  }
  if (!chat_template.empty()) {
    for (const char* fragment : kTemplateFragments)
      if (chat_template.find(with_newlines(fragment)) == std::string::npos)
        return Unsupported("the export's chat template lacks \"" + std::string(fragment) +
                           "\"; the C++ prompt renders only Qwen2.5-Omni's chat template");
  }
  return ChatPrompt(tokenizer, spec);
}

ChatPrompt ChatPrompt::unchecked(const Tokenizer& tokenizer, const LayoutSpec& spec) { return ChatPrompt(tokenizer, spec); }

// Template text (control tokens are control) and untrusted text (a question, a system prompt: its
// control tokens are text, Tokenizer::encode's split_special_tokens), tokenized piece by piece. Each
// untrusted piece is given with the template text around it up to the nearest control token, so
// the ids equal tokenizing the whole rendering when it holds no control tokens (Python's
// prompt._encode_untrusted; golden cases check both).
Result<std::vector<int64_t>> ChatPrompt::encode_parts(const std::vector<TextPart>& parts, const char* what) const {
  std::vector<int64_t> ids;
  for (const TextPart& part : parts) {
    OMNISIFT_ASSIGN_OR_RETURN(std::vector<int64_t> piece, tokenizer_->encode(part.text, part.untrusted));
    ids.insert(ids.end(), piece.begin(), piece.end());
  }
  Status st = check_text_ids(spec_, ids, what);
  if (!st.ok())
    return InvalidArgument(std::string("the ") + what + " has media tokens such as <|AUDIO|> around the video; the "
                           "C++ prompt renders only Qwen2.5-Omni's chat template");
  return ids;
}

Result<std::vector<int64_t>> ChatPrompt::prefix_ids(const std::optional<std::string>& system) const {
  return encode_parts({{"<|im_start|>", false},
                       {"system\n" + (system ? *system : std::string(kTemplateDefaultSystem)), true},
                       {"<|im_end|>\n<|im_start|>user\n", false}}, "system prompt");
}
Result<std::vector<int64_t>> ChatPrompt::suffix_ids(const std::string& question) const {
  return encode_parts({{question, true}, {"<|im_end|>\n<|im_start|>assistant\n", false}}, "question");
}
Result<std::vector<int64_t>> ChatPrompt::followup_ids(const std::string& question) const {
  return encode_parts({{"<|im_end|>\n<|im_start|>", false}, {"user\n" + question, true},
                       {"<|im_end|>\n<|im_start|>assistant\n", false}}, "question");
}

Result<std::vector<int64_t>> ChatPrompt::turn_prefix_ids() const {
  return encode_parts({{turn_prefix_text(), false}}, "turn text");
}
Result<std::vector<int64_t>> ChatPrompt::turn_suffix_ids(const std::string& question) const {
  return suffix_ids(question);   // the template writes a turn's question as the first's
}

}  // namespace omnisift
