// The web chat page served at "/": one self-contained HTML file (no CDN) compiled into kiln.
#pragma once

#include <string>

namespace kiln::serve {

const std::string& chat_page_html();

}  // namespace kiln::serve
