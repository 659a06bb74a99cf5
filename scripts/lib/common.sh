# Shell helpers shared by the scripts in scripts/ (sourced, not run).

# A command as one line a shell can re-read: words with special characters in single quotes.
print_cmd() {
    local out="" word
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then out+="$word "
        else out+="'${word//\'/\'\\\'\'}' "; fi
    done
    echo "${out% }"
}
