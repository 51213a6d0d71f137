"use strict";
// Copy a new client secret to the clipboard from the page that shows it once.
document.addEventListener("click", function (event) {
  const button = event.target.closest("button.copy-secret");
  if (!button) {
    return;
  }
  const field = document.getElementById(button.dataset.copy);
  const done = function () {
    button.textContent = "Copied";
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(done, function () {
      field.select();
    });
  } else {
    field.select();
    document.execCommand("copy");
    done();
  }
});
