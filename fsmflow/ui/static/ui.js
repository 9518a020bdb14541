// fsmflow ui: the live refresh of the instances page and the per-row context of the
// instance page. Our own few lines (no library, nothing from another site); served as a
// file so the Content-Security-Policy can forbid inline script.
"use strict";

(function () {
  function parse(html) {
    return new DOMParser().parseFromString(html, "text/html");
  }

  function get(url) {
    return fetch(url, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.text();
    });
  }

  // Replace #counts, #instances and #pager with those of the fragment, every few seconds.
  function liveRefresh(live) {
    var every = parseInt(live.dataset.refreshMs, 10) || 5000;
    function tick() {
      if (document.hidden) {
        window.setTimeout(tick, every);
        return;
      }
      get(live.dataset.refreshUrl)
        .then(function (html) {
          var fresh = parse(html);
          ["counts", "instances", "pager"].forEach(function (id) {
            var next = fresh.getElementById(id);
            var old = document.getElementById(id);
            if (next && old) {
              old.replaceWith(document.importNode(next, true));
            }
          });
          live.dataset.refreshes = String((parseInt(live.dataset.refreshes, 10) || 0) + 1);
          live.classList.remove("stale");
        })
        .catch(function () {
          live.classList.add("stale");
        })
        .finally(function () {
          window.setTimeout(tick, every);
        });
    }
    window.setTimeout(tick, every);
  }

  // A row's context is fetched only when its button is clicked; a second click hides it.
  function toggleContext(button) {
    var row = button.closest("li.row");
    var slot = row && row.querySelector(".context-slot");
    if (!slot) {
      return;
    }
    if (slot.firstChild) {
      slot.replaceChildren();
      button.textContent = "Show context";
      return;
    }
    button.disabled = true;
    get(button.dataset.url)
      .then(function (html) {
        var found = parse(html).querySelector(".context");
        if (found) {
          slot.replaceChildren(document.importNode(found, true));
          button.textContent = "Hide context";
        }
      })
      .catch(function (error) {
        var note = document.createElement("p");
        note.className = "context-error";
        note.textContent = "Could not load the context: " + error.message;
        slot.replaceChildren(note);
      })
      .finally(function () {
        button.disabled = false;
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live) {
      liveRefresh(live);
    }
    document.addEventListener("click", function (event) {
      var button = event.target.closest && event.target.closest("button.show-context");
      if (button) {
        toggleContext(button);
      }
    });
  });
})();
