// lobbyd's /docs: Swagger UI from this daemon (no CDN), and the API token kept for the tab.
//
// With TOKEN set, /openapi.json answers 403 without it: the page then asks for the
// token once, keeps it in sessionStorage (never in a URL), and sends it as
// "Authorization: Token <TOKEN>" with every request Swagger UI makes: the document
// and "Try it out" alike.
(function () {
  "use strict";
  var KEY = "lobby.token";
  var form = document.getElementById("token-form");
  var input = document.getElementById("token");
  var note = document.getElementById("token-note");

  function header() {
    var token = sessionStorage.getItem(KEY);
    return token ? "Token " + token : "";
  }

  function ask(wrong) {
    note.textContent = wrong
      ? "lobbyd refused this token. Enter its TOKEN:"
      : "This lobbyd needs its API token (TOKEN). Enter it to use the API from this page:";
    form.hidden = false;
    input.focus();
  }

  function show() {
    form.hidden = true;
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      validatorUrl: null, // the default sends the document to validator.swagger.io
      deepLinking: true,
      requestInterceptor: function (request) {
        var value = header();
        if (value && !request.headers.Authorization) {
          request.headers.Authorization = value;
        }
        return request;
      },
    });
  }

  function start() {
    var value = header();
    fetch("openapi.json", { headers: value ? { Authorization: value } : {} })
      .then(function (response) {
        if (response.status === 403) {
          ask(value !== "");
        } else {
          show();
        }
      })
      .catch(show); // Swagger UI shows the error itself
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    input.value = "";
    start();
  });
  start();
})();
